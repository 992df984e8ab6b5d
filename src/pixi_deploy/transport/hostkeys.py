"""Host-key policy: known_hosts by default, opt-in accept-new, changed keys always refused.

asyncssh can only say "not trusted". We want three distinct answers (unknown, changed,
newly accepted), so the known_hosts file is loaded here and asyncssh asks
:meth:`HostKeyPolicy.validate` about every key it does not already trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh

DEFAULT_PORT = 22


def host_pattern(host: str, port: int | None) -> str:
    """The known_hosts spelling of a host: ``host`` on port 22, else ``[host]:port``."""
    return host if port in (None, DEFAULT_PORT) else f"[{host}]:{port}"


class HostKeyPolicy:
    """Decides on keys missing from known_hosts; remembers why it refused one."""

    def __init__(self, known_hosts: Path, accept_new: bool) -> None:
        self.path = known_hosts
        self.accept_new = accept_new
        self.verdict: str | None = None  # "unknown" | "changed" | "accepted"
        self.pattern = ""
        self.fingerprint = ""
        try:
            data = known_hosts.read_bytes()
        except FileNotFoundError:
            data = b""
        except OSError:
            data = b""
        self.known = asyncssh.import_known_hosts(data.decode("utf-8", "replace"))

    def validate(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        """Called by asyncssh for a key not listed as trusted for this host."""
        lookup_port = None if port == DEFAULT_PORT else port
        trusted = asyncssh.match_known_hosts(self.known, host, addr, lookup_port)[0]
        self.pattern = host_pattern(host, port)
        self.fingerprint = key.get_fingerprint("sha256")
        if trusted:
            self.verdict = "changed"
            return False
        if not self.accept_new:
            self.verdict = "unknown"
            return False
        self._append(self.pattern, key)
        self.verdict = "accepted"
        return True

    def _append(self, pattern: str, key: asyncssh.SSHKey) -> None:
        """Add a line like OpenSSH's ``StrictHostKeyChecking=accept-new`` would."""
        algorithm, blob = key.export_public_key("openssh").decode().split()[:2]
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not self.path.read_bytes().endswith(b"\n"):
                fh.write("\n")
            fh.write(f"{pattern} {algorithm} {blob}\n")


class PolicyClient(asyncssh.SSHClient):
    """asyncssh client hooks: host-key decisions and noticing a lost connection."""

    def __init__(self, policy: HostKeyPolicy, on_lost: object = None) -> None:
        self._policy = policy
        self._on_lost = on_lost

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        return self._policy.validate(host, addr, port, key)

    def connection_lost(self, exc: Exception | None) -> None:
        if callable(self._on_lost):
            self._on_lost()
