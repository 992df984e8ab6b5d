"""Transport against the real OpenSSH server of the test cluster (and throw-away sshds)."""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pixi_deploy.errors import ConfigError, TransportError
from pixi_deploy.transport import (
    RemoteCommandError,
    RemoteFileNotFoundError,
    SSHSettings,
    Transport,
    get_transport,
)

from .conftest import free_port

pytestmark = pytest.mark.cluster

NASTY_NAME = 'dir with space/it\'s "quoted" $(touch PWNED) `id`;x'


def session_pid(transport: Transport) -> int:
    """PID of the sshd process serving this transport's connection (sshd runs locally)."""
    pid = int(transport.run(["sh", "-c", "echo $PPID"]).stdout)
    while pid > 1:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        if cmdline.startswith("sshd: pdtest@"):
            return pid
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    raise AssertionError("no sshd session process found")


def cut(transport: Transport) -> None:
    os.kill(session_pid(transport), signal.SIGKILL)
    time.sleep(0.2)


# -- commands --------------------------------------------------------------------------


def test_run_output_status_input_cwd_env(transport: Transport, remote_dir: str) -> None:
    r = transport.run(["sh", "-c", 'echo "$1"; echo err >&2', "sh", "a b $(x)"])
    assert (r.exit_status, r.stdout, r.stderr) == (0, "a b $(x)\n", "err\n")
    assert transport.run(["cat"], input="piped\n").stdout == "piped\n"
    assert transport.run(["cat"]).stdout == ""  # stdin is closed, nothing hangs
    r = transport.run(["sh", "-c", 'printf "%s %s" "$PWD" "$X"'], cwd=remote_dir, env={"X": "$y"})
    assert r.stdout == f"{remote_dir} $y"
    assert transport.run(["false"], check=False).exit_status == 1


def test_check_raises_one_line_error_with_stderr(transport: Transport) -> None:
    with pytest.raises(RemoteCommandError) as info:
        transport.run(["sh", "-c", "echo first >&2; echo 'no such thing' >&2; exit 3"])
    assert info.value.exit_status == 3
    assert "status 3" in str(info.value) and "no such thing" in str(info.value)
    assert "\n" not in str(info.value)


def test_timeout_stops_command(transport: Transport) -> None:
    start = time.monotonic()
    with pytest.raises(TransportError, match=r"did not finish within 0\.5s"):
        transport.run(["sleep", "20"], timeout=0.5)
    assert time.monotonic() - start < 5
    assert transport.run(["echo", "still fine"]).stdout == "still fine\n"


def test_a_program_that_exits_before_reading_its_input_gives_its_status(
    transport: Transport,
) -> None:
    # what a script that refuses early does (exit 96: "the code snapshot is missing"): the
    # channel may be closed before the input is written, which must not be a broken pipe
    big = b"x" * (4 << 20)
    for _ in range(10):
        result = transport.run_script("echo refused >&2; exit 96", input=big, check=False)
        assert (result.exit_status, result.stderr.strip()) == (96, "refused")
    with pytest.raises(RemoteCommandError, match="status 96: refused"):
        transport.run_script("echo refused >&2; exit 96", input=big)


def test_run_script_multiline(transport: Transport) -> None:
    script = 'set -eu\nfor a in "$@"; do\n  printf "<%s>" "$a"\ndone\n'
    assert transport.run_script(script, ["x y", "$(z)"]).stdout == "<x y><$(z)>"


def test_threads_share_one_connection(transport: Transport) -> None:
    def work(i: int) -> str:
        return transport.run(["echo", str(i)]).stdout.strip()

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(work, range(24)))
    assert results == [str(i) for i in range(24)]
    assert transport.stats.connections_opened == 1
    assert transport.stats.commands_run == 24


def test_refused_channels_are_asked_again(key_settings: SSHSettings) -> None:
    """With more channels in flight than sshd's MaxSessions (10), sshd refuses some; each
    refused command never started, so it is asked for again once a slot frees up."""
    with Transport(key_settings, max_channels=16) as t:

        def work(i: int) -> str:
            return t.run(["sh", "-c", 'sleep 1; echo "$1"', "sh", str(i)]).stdout.strip()

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(work, range(16)))
        assert results == [str(i) for i in range(16)]
        assert t.stats.channel_refusals > 0  # the server did refuse, so the retry was exercised
        assert t.stats.commands_run == 16


def test_channel_refusal_that_persists_is_one_clear_error(key_settings: SSHSettings) -> None:
    with Transport(key_settings, max_channels=16) as t:
        t._session.refusal_delays = ()

        def work(_: int) -> TransportError | None:
            try:
                t.run(["sleep", "2"])
            except TransportError as error:
                return error
            return None

        with ThreadPoolExecutor(14) as pool:
            errors = [e for e in pool.map(work, range(14)) if e is not None]
    assert errors, "sshd refused nothing: MaxSessions is above 13 here?"
    assert all("refused a new SSH channel" in str(e) and "MaxSessions" in str(e) for e in errors)


def test_get_transport_from_env_is_shared(ssh_env) -> None:  # type: ignore[no-untyped-def]
    t = get_transport()
    try:
        assert get_transport(SSHSettings.from_env()) is t
        assert (
            t.platform() == {"x86_64": "linux-64", "aarch64": "linux-aarch64"}[os.uname().machine]
        )
        assert t.base_path == ssh_env.base_path
    finally:
        t.close()


def test_platform_unknown_is_clear(transport: Transport, monkeypatch: pytest.MonkeyPatch) -> None:
    real_run = transport.run
    monkeypatch.setattr(
        transport, "run", lambda argv, **kw: real_run(["echo", "Darwin", "arm64"], **kw)
    )
    with pytest.raises(ConfigError, match="Darwin arm64"):
        transport.platform()


# -- reconnect ---------------------------------------------------------------------------


def test_reconnects_after_connection_drop(transport: Transport) -> None:
    assert transport.run(["true"]).exit_status == 0
    cut(transport)
    assert transport.run(["echo", "back"]).stdout == "back\n"
    assert transport.stats.connections_opened == 2


def test_local_port_names_this_connection(key_settings: SSHSettings) -> None:
    """What tests (and a user reading sshd's logs) tell this connection apart by; the server
    sees it as the peer port of the sshd process serving it."""
    with Transport(key_settings) as t:
        assert t.local_port is None  # nothing opened yet
        seen = t.run(["sh", "-c", 'echo "$SSH_CONNECTION"']).stdout.split()
        assert t.local_port == int(seen[1])  # SSH_CONNECTION: client ip, client port, ...
        t.disconnect()
        assert t.local_port is None


def test_reconnect_fails_cleanly_when_server_is_gone(key_settings: SSHSettings) -> None:
    port = free_port()
    t = Transport(key_settings.with_changes(port=port, connect_timeout=1))
    t._session.reconnect_delays = (0.05,)
    with t, pytest.raises(TransportError, match="connection refused"):
        t.run(["true"])


# -- authentication and host keys ----------------------------------------------------------


def test_password_login_and_wrong_password(
    key_settings: SSHSettings,
    test_cluster,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    caplog.set_level(logging.DEBUG)
    good = key_settings.with_changes(key_path=None, password=test_cluster.password)
    with Transport(good) as t:
        assert t.run(["whoami"]).stdout.strip() == "pdtest"
    wrong = "Wr0ng-" + test_cluster.password
    with (
        Transport(good.with_changes(password=wrong)) as t,
        pytest.raises(TransportError, match="permission denied") as info,
    ):
        t.run(["true"])
    for text in (str(info.value), repr(info.value), caplog.text, repr(good)):
        assert test_cluster.password not in text and wrong not in text


def test_wrong_key_is_permission_denied(key_settings: SSHSettings, tmp_path: Path) -> None:
    import asyncssh

    key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp_path / "other_key").write_bytes(key.export_private_key())
    secret = key.export_private_key().decode().splitlines()[1]
    with (
        Transport(key_settings.with_changes(key_path=tmp_path / "other_key")) as t,
        pytest.raises(TransportError, match="permission denied") as info,
    ):
        t.connect()
    assert secret not in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_host_key_refused_then_accept_new(
    key_settings: SSHSettings, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    with (
        Transport(key_settings.with_changes(known_hosts=known)) as t,
        pytest.raises(TransportError, match="not in") as info,
    ):
        t.connect()
    assert "ssh-keyscan -p 2222 127.0.0.1" in str(info.value)
    assert not known.exists()
    with Transport(key_settings.with_changes(known_hosts=known, accept_new_host_key=True)) as t:
        t.connect()
    assert known.read_text().startswith("[127.0.0.1]:2222 ssh-ed25519 ")
    with Transport(key_settings.with_changes(known_hosts=known)) as t:
        assert t.run(["true"]).exit_status == 0


def test_changed_host_key_is_an_attack_warning(
    key_settings: SSHSettings, other_sshd: tuple[int, Path], tmp_path: Path
) -> None:
    port, _ = other_sshd
    cluster_key = key_settings.known_hosts.read_text().split()[1:3]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {' '.join(cluster_key)}\n")
    changed = key_settings.with_changes(port=port, known_hosts=known, accept_new_host_key=True)
    with Transport(changed) as t, pytest.raises(TransportError, match="CHANGED") as info:
        t.connect()
    assert "man-in-the-middle" in str(info.value)
    assert known.read_text() == f"[127.0.0.1]:{port} {' '.join(cluster_key)}\n"


def test_nothing_listening(key_settings: SSHSettings) -> None:
    with (
        Transport(key_settings.with_changes(port=free_port())) as t,
        pytest.raises(TransportError, match="connection refused"),
    ):
        t.connect()


def test_connect_timeout(key_settings: SSHSettings) -> None:
    with socket.socket() as silent:  # accepts TCP but never speaks SSH
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        start = time.monotonic()
        with (
            Transport(key_settings.with_changes(port=port, connect_timeout=0.5)) as t,
            pytest.raises(TransportError, match=r"within 0\.5s"),
        ):
            t.connect()
    assert time.monotonic() - start < 5


def test_ssh_config_alias_and_proxyjump(test_cluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    c = test_cluster
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host jumphost\n  HostName {c.host}\n  Port {c.port}\n  User {c.user}\n"
        f"  IdentityFile {c.key_path}\n"
        f"Host edge\n  HostName {c.host}\n  Port {c.port}\n  User {c.user}\n"
        f"  IdentityFile {c.key_path}\n  ProxyJump jumphost\n"
        f"Host edge-broken-jump\n  HostName {c.host}\n  Port {c.port}\n"
        f"  ProxyJump {c.user}@127.0.0.1:{free_port()}\n"
    )
    settings = SSHSettings(host="edge", ssh_config=config, known_hosts=c.known_hosts)
    with Transport(settings) as t:
        assert t.run(["whoami"]).stdout.strip() == c.user
    broken = settings.with_changes(host="edge-broken-jump")
    with Transport(broken) as t, pytest.raises(TransportError, match="connection refused"):
        t.connect()


# -- files ------------------------------------------------------------------------------


def test_files_at_literal_nasty_paths(
    transport: Transport, remote_dir: str, tmp_path: Path
) -> None:
    target = f"{remote_dir}/{NASTY_NAME}"
    transport.put_bytes(b"hello\n", target)
    assert transport.exists(target)
    assert transport.read_bytes(target) == b"hello\n"
    assert transport.run(["cat", target]).stdout == "hello\n"
    local = tmp_path / "blob"
    local.write_bytes(os.urandom(300_000))
    transport.upload(local, target + ".bin")
    assert transport.read_bytes(target + ".bin") == local.read_bytes()
    listing = transport.run(["find", remote_dir, "-name", "PWNED"]).stdout
    assert listing == ""
    assert not transport.exists(f"{remote_dir}/dir with space/PWNED")


def test_read_missing_file(transport: Transport, remote_dir: str) -> None:
    with pytest.raises(RemoteFileNotFoundError):
        transport.read_bytes(f"{remote_dir}/nope")
    assert not transport.exists(f"{remote_dir}/nope")


def test_upload_progress_verify_and_atomic(
    transport: Transport, remote_dir: str, tmp_path: Path
) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(3_000_000))
    seen: list[tuple[int, int]] = []
    transport.upload(local, f"{remote_dir}/sub/data.bin", progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3_000_000, 3_000_000)
    remote_sum = transport.run(["sha256sum", f"{remote_dir}/sub/data.bin"]).stdout.split()[0]
    assert remote_sum == hashlib.sha256(local.read_bytes()).hexdigest()
    assert not transport.exists(f"{remote_dir}/sub/data.bin.part")
    assert transport.stats.bytes_uploaded == 3_000_000


def test_upload_resumes_from_existing_part(
    transport: Transport, remote_dir: str, tmp_path: Path
) -> None:
    data = os.urandom(12_000_000)
    local = tmp_path / "data.bin"
    local.write_bytes(data)
    transport.put_bytes(data[:8_000_000], f"{remote_dir}/data.bin.part")
    before = transport.stats.bytes_uploaded
    transport.upload(local, f"{remote_dir}/data.bin")
    sent = transport.stats.bytes_uploaded - before
    assert sent < 12_000_000 - 3_000_000  # continued, did not start over
    assert transport.read_bytes(f"{remote_dir}/data.bin") == data


def test_upload_part_from_other_file_is_detected(
    transport: Transport, remote_dir: str, tmp_path: Path
) -> None:
    local = tmp_path / "data.bin"
    local.write_bytes(os.urandom(8_000_000))
    transport.put_bytes(os.urandom(6_000_000), f"{remote_dir}/data.bin.part")
    with pytest.raises(TransportError, match="sha256"):
        transport.upload(local, f"{remote_dir}/data.bin")
    assert not transport.exists(f"{remote_dir}/data.bin.part")
    transport.upload(local, f"{remote_dir}/data.bin")  # a re-run starts clean
    assert transport.read_bytes(f"{remote_dir}/data.bin") == local.read_bytes()


@pytest.mark.slow
def test_upload_survives_cut_connection(
    transport: Transport, remote_dir: str, tmp_path: Path
) -> None:
    size = 64 * 1024 * 1024
    local = tmp_path / "big.bin"
    with local.open("wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
    victim = session_pid(transport)
    killed = threading.Event()

    def progress(done: int, total: int) -> None:
        if done > total // 3 and not killed.is_set():
            killed.set()
            os.kill(victim, signal.SIGKILL)

    transport.upload(local, f"{remote_dir}/big.bin", progress=progress)
    assert killed.is_set()
    stats = transport.stats
    assert stats.upload_resumes >= 1 and stats.connections_opened >= 2
    assert size < stats.bytes_uploaded < size * 1.5  # resumed, not restarted
    remote_sum = transport.run(["sha256sum", f"{remote_dir}/big.bin"]).stdout.split()[0]
    assert remote_sum == hashlib.sha256(local.read_bytes()).hexdigest()
    assert not transport.exists(f"{remote_dir}/big.bin.part")


# -- streams -------------------------------------------------------------------------------


def test_stream_callbacks_and_exit_status(transport: Transport) -> None:
    out: list[str] = []
    err: list[str] = []
    status = transport.stream(
        ["sh", "-c", "for i in 1 2 3; do echo out$i; echo err$i >&2; done; exit 4"],
        out.append,
        err.append,
    )
    assert (status, out, err) == (4, ["out1", "out2", "out3"], ["err1", "err2", "err3"])


def test_follow_log_live_and_cancel_kills_remote_tail(
    transport: Transport, remote_dir: str
) -> None:
    log = f"{remote_dir}/job 1.log"
    transport.put_bytes(b"line 0\n", log)
    with transport.iter_lines(["tail", "-n", "+1", "-F", log]) as lines:
        received: list[str] = []
        for _, line in lines:
            received.append(line)
            if len(received) == 3:
                break
            transport.run(["sh", "-c", 'echo "line $2" >> "$1"', "sh", log, str(len(received))])
    assert received == ["line 0", "line 1", "line 2"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if transport.run(["pgrep", "-f", f"tail -n \\+1 -F {remote_dir}"], check=False).exit_status:
            break
        time.sleep(0.1)
    else:
        pytest.fail("remote tail -F still running after cancel")


def test_stream_stop_event(transport: Transport) -> None:
    stop = threading.Event()
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        stop.set()

    start = time.monotonic()
    status = transport.stream(["sh", "-c", "echo hi; sleep 60"], on_line, stop=stop)
    assert status is None and lines == ["hi"]
    assert time.monotonic() - start < 10
