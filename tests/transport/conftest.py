"""Fixtures for transport tests: settings for the test cluster and throw-away sshds.

Extra sshd instances (only on 127.0.0.1) give us a host whose key differs from the one in
known_hosts, without touching the shared test cluster.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixi_deploy.transport import SSHSettings, Transport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def key_settings(ssh_settings) -> SSHSettings:  # type: ignore[no-untyped-def]
    return ssh_settings.with_changes(connect_timeout=10)


@pytest.fixture
def transport(key_settings: SSHSettings) -> Iterator[Transport]:
    t = Transport(key_settings)
    yield t
    t.close()


@pytest.fixture
def remote_dir(transport: Transport, key_settings: SSHSettings, request) -> Iterator[str]:  # type: ignore[no-untyped-def]
    assert key_settings.base_path
    path = f"{key_settings.base_path}/transport-tests/{request.node.name}-{time.time_ns()}"
    transport.run(["mkdir", "-p", path])
    yield path
    transport.run(["rm", "-rf", path])


@pytest.fixture
def other_sshd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A second sshd on a free loopback port with its own fresh host key."""
    port = free_port()
    host_key = tmp_path / "host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
        f"PidFile {tmp_path / 'sshd.pid'}\nAllowUsers pdtest\nUsePAM no\n"
        "PasswordAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    try:
        yield port, host_key.with_suffix(".pub")
    finally:
        proc.terminate()
        proc.wait(5)
