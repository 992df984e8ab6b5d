"""quoting: the only place argv becomes a shell command line."""

from __future__ import annotations

import subprocess
from pathlib import PurePosixPath

import pytest

from pixi_deploy.transport import quoting

NASTY = ["a b", "it's", '"dq"', "$(touch /tmp/pwned)", "`id`", "semi;colon", "new\nline", "*", ""]


def sh(command: str) -> str:
    """Run a command line in a local POSIX sh, as sshd would on the edge node."""
    return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_join_round_trips_through_a_real_shell() -> None:
    command = quoting.join(["printf", "%s\\0", *NASTY])
    assert sh(command).split("\0")[:-1] == NASTY


def test_sh_c_passes_args_as_positional_parameters() -> None:
    argv = quoting.sh_c('for a in "$@"; do printf "[%s]" "$a"; done', NASTY)
    assert sh(quoting.join(argv)) == "".join(f"[{a}]" for a in NASTY)


def test_command_line_with_cwd_and_env(tmp_path: PurePosixPath) -> None:
    d = tmp_path / "dir with 'quote' $(x)"
    d.mkdir()
    command = quoting.command_line(
        ["sh", "-c", 'printf "%s|%s" "$PWD" "$GREETING"'], cwd=d, env={"GREETING": "hi $(x) 'y'"}
    )
    assert sh(command) == f"{d}|hi $(x) 'y'"


def test_bad_input_is_refused() -> None:
    with pytest.raises(TypeError):
        quoting.join("ls -l")  # a string is not an argv
    with pytest.raises(ValueError, match="empty"):
        quoting.join([])
    with pytest.raises(ValueError, match="NUL"):
        quoting.quote("a\0b")
    with pytest.raises(ValueError, match="variable name"):
        quoting.command_line(["true"], env={"A B": "x"})


def test_watchdog_keeps_exit_status_and_output() -> None:
    # stdin stays open while the program runs, as on an SSH channel that is not cancelled
    command = quoting.join(quoting.with_watchdog(["sh", "-c", "echo out; echo err >&2; exit 3"]))
    proc = subprocess.Popen(
        ["sh", "-c", command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    assert (proc.wait(timeout=5), out, err) == (3, "out\n", "err\n")
    proc.stdin.close()


def test_watchdog_kills_program_when_stdin_closes() -> None:
    command = quoting.join(quoting.with_watchdog(["sleep", "30"]))
    proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE)
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=5) != 0
