"""post_login_command and force_tty against the real sshd of the test cluster."""

from __future__ import annotations

import pytest

from pixi_deploy.errors import ConfigError
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.transport.quoting import after_login

pytestmark = pytest.mark.cluster


def test_post_login_command_runs_before_every_command(key_settings: SSHSettings) -> None:
    settings = key_settings.with_changes(post_login_command="export PD_SITE=after-login")
    with Transport(settings) as t:
        assert t.run(["sh", "-c", 'printf %s "$PD_SITE"']).stdout == "after-login"
        lines = []
        t.stream(["sh", "-c", 'echo "$PD_SITE"'], lines.append)
        assert lines == ["after-login"]
    with Transport(key_settings) as t:  # and only with the setting
        assert t.run(["sh", "-c", 'printf %s "${PD_SITE:-unset}"']).stdout == "unset"


def test_post_login_template_wraps_the_command(key_settings: SSHSettings) -> None:
    settings = key_settings.with_changes(post_login_command="env PD_SITE=wrapped {cmd}")
    with Transport(settings) as t:
        # arguments with blanks and quotes survive the extra shell level
        out = t.run(["sh", "-c", 'printf "%s|%s" "$PD_SITE" "$1"', "sh", "it's a b"]).stdout
        assert out == "wrapped|it's a b"


def test_failing_post_login_command_fails_the_command(key_settings: SSHSettings) -> None:
    with Transport(key_settings.with_changes(post_login_command="false")) as t:
        assert t.run(["echo", "never"], check=False).exit_status == 1


def test_after_login_quoting() -> None:
    assert after_login("ls -l", None) == "ls -l"
    assert after_login("ls -l", "module load x") == "module load x && ls -l"
    assert after_login("echo 'a'", "vsc5 {cmd}") == "vsc5 sh -c 'echo '\"'\"'a'\"'\"''"
    with pytest.raises(ConfigError, match="one non-empty line"):
        SSHSettings(host="h", post_login_command="a\nb")


def test_force_tty_gives_commands_a_terminal(key_settings: SSHSettings, remote_dir: str) -> None:
    probe = ["sh", "-c", "if [ -t 1 ]; then echo tty; else echo no-tty; fi; echo second"]
    with Transport(key_settings) as t:
        assert t.run(probe).stdout == "no-tty\nsecond\n"
    with Transport(key_settings.with_changes(force_tty=True)) as t:
        assert t.run(probe).stdout == "tty\nsecond\n"  # CRLF from the terminal normalised
        # commands that send data keep a clean channel: a terminal would mangle the bytes
        data = bytes(range(256)) * 4
        t.run(["sh", "-c", f"cat > {remote_dir}/blob"], input=data)
        assert t.read_bytes(f"{remote_dir}/blob") == data
