"""Extra sshd instances on loopback for SSH certificate and jump-host tests, and a test CA.

The shared test cluster's sshd must not be restarted (other pytest sessions use it), so tests
that need a server trusting a certificate authority, or a jump host that forwards TCP, start
their own sshd on a free 127.0.0.1 port from the same pieces: the cluster's host key (so the
known_hosts line is the cluster's key under ``[127.0.0.1]:PORT``), the same test user, and a
config of their own. Each is stopped by its own pid when the test ends.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    known_hosts: Path
    log: Path


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port}: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def extra_sshd(
    cluster: Any, workdir: Path, *, trusted_ca: Path | None = None, forwarding: bool = False
) -> Iterator[Sshd]:
    """An sshd for the test user on a free loopback port, stopped afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key = Path(cluster.state_dir) / "etc" / "ssh_host_ed25519_key"
    config = workdir / f"sshd_config-{port}"
    log = workdir / f"sshd-{port}.log"
    lines = [
        f"Port {port}",
        "ListenAddress 127.0.0.1",
        f"HostKey {host_key}",
        f"PidFile {workdir / f'sshd-{port}.pid'}",
        f"AllowUsers {cluster.user}",
        "PermitRootLogin no",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        "AuthorizedKeysFile .ssh/authorized_keys",
        "Subsystem sftp internal-sftp",
        "PrintMotd no",
        "LogLevel VERBOSE",
        f"AllowTcpForwarding {'yes' if forwarding else 'no'}",
    ]
    if trusted_ca is not None:
        lines.append(f"TrustedUserCAKeys {trusted_ca}")
    config.write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
    key_type, key_b64 = host_key.with_suffix(".pub").read_text().split()[:2]
    known_hosts = workdir / f"known_hosts-{port}"
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=log_file)
    try:
        _wait_listening(port, proc, log)
        yield Sshd("127.0.0.1", port, known_hosts, log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)


class CertAuthority:
    """A user-certificate authority made with ``ssh-keygen``, signing keys for the test user."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.key = directory / "ca"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test-ca", "-f", str(self.key)],
            check=True,
        )
        self.public = self.key.with_suffix(".pub")

    def new_key(self, name: str) -> Path:
        """A fresh client key (not in any authorized_keys: only a certificate lets it in)."""
        path = self.directory / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
        return path

    def sign(self, key: Path, principal: str, validity: str, out: Path | None = None) -> Path:
        """Sign ``key.pub``; ``validity`` as ssh-keygen -V takes it (``-5m:+1h``, ``-2h:-1h``)."""
        argv = ["ssh-keygen", "-q", "-s", str(self.key), "-I", f"{key.name}-id", "-n", principal]
        subprocess.run([*argv, "-V", validity, str(key) + ".pub"], check=True)
        cert = Path(str(key) + "-cert.pub")
        if out is not None and out != cert:
            cert.replace(out)
            return out
        return cert
