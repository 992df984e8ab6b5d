"""SSH user certificates: when each one we would offer is valid, and why a login was refused.

HPC sites increasingly hand out short-lived SSH user certificates (smallstep ``step ssh login``,
OIDC portals) instead of registering keys. asyncssh offers them on its own (``<key>-cert.pub``
beside a key, ``CertificateFile`` in ssh config, certificates held by ssh-agent), but when the
server refuses one it can only say "permission denied". After a refused login we therefore
look at the certificates that were on offer and, if one has expired or is not valid yet or
does not name the login user, say exactly that, with the time, in one line.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

# OpenSSH's "forever" (valid_before = 2**64 - 1)
_FOREVER = 2**63


@dataclass(frozen=True)
class CertificateInfo:
    """One user certificate: where it came from and when it is valid (UNIX times)."""

    source: str  # a file path, or "ssh-agent"
    key_id: str
    principals: tuple[str, ...]
    valid_after: int
    valid_before: int

    def problem(self, user: str | None, now: float | None = None) -> str | None:
        """Why the server will refuse it, or None if it looks usable."""
        now = time.time() if now is None else now
        if now >= self.valid_before:
            return f"the SSH certificate {self.source} expired at {format_time(self.valid_before)}"
        if now < self.valid_after:
            return (
                f"the SSH certificate {self.source} is not valid until "
                f"{format_time(self.valid_after)}"
            )
        if user and self.principals and user not in self.principals:
            names = ", ".join(self.principals)
            return (
                f"the SSH certificate {self.source} is for {names}, not for the login user {user}"
            )
        return None

    def seconds_left(self, now: float | None = None) -> float:
        return self.valid_before - (time.time() if now is None else now)


def format_time(stamp: int) -> str:
    if stamp >= _FOREVER:
        return "never"
    return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _info(cert: Any, source: str) -> CertificateInfo | None:
    # asyncssh parses the certificate but keeps its validity window in private attributes;
    # reading them here (and only here) beats parsing `ssh-keygen -L` text.
    after, before = getattr(cert, "_valid_after", None), getattr(cert, "_valid_before", None)
    if not isinstance(after, int) or not isinstance(before, int):
        return None
    key_id = getattr(cert, "_key_id", b"")
    return CertificateInfo(
        source=source,
        key_id=key_id.decode("utf-8", "replace") if isinstance(key_id, bytes) else str(key_id),
        principals=tuple(str(p) for p in (cert.principals or ())),
        valid_after=after,
        valid_before=before,
    )


def read_certificate_file(path: str | Path) -> CertificateInfo | None:
    """The certificate in ``path`` (an OpenSSH ``*-cert.pub``), or None if unreadable."""
    try:
        cert = asyncssh.read_certificate(str(Path(path).expanduser()))
    except (OSError, asyncssh.KeyImportError, ValueError):
        return None
    return _info(cert, str(path))


def certificate_for_key(key_path: str | Path) -> CertificateInfo | None:
    """The certificate OpenSSH and asyncssh pair with a private key: ``<key>-cert.pub``."""
    return read_certificate_file(f"{Path(key_path).expanduser()}-cert.pub")


def _from_public_data(algorithm: bytes, data: bytes, source: str) -> CertificateInfo | None:
    if not algorithm.endswith(b"-cert-v01@openssh.com"):
        return None
    try:
        cert = asyncssh.import_certificate(algorithm + b" " + base64.b64encode(data))
    except (asyncssh.KeyImportError, ValueError):
        return None
    return _info(cert, source)


def local_certificates(options: asyncssh.SSHClientConnectionOptions) -> list[CertificateInfo]:
    """Certificates asyncssh loaded with the client keys of a connect (files and config)."""
    found = []
    for pair in getattr(options, "client_keys", None) or ():
        if getattr(pair, "has_cert", False):
            name = getattr(pair, "_filename", None)
            label = f"{name.decode() if isinstance(name, bytes) else name}-cert.pub"
            info = _from_public_data(pair.algorithm, pair.public_data, label if name else "file")
            if info is not None:
                found.append(info)
    return found


async def agent_certificates(agent_path: str | None) -> list[CertificateInfo]:
    """Certificates held by ssh-agent (``ssh-add`` loads ``<key>-cert.pub`` with the key)."""
    if not agent_path:
        return []
    try:
        async with asyncssh.connect_agent(agent_path) as agent:
            keys = await agent.get_keys()
    except (OSError, asyncssh.Error, ValueError):
        return []
    found = []
    for pair in keys:
        info = _from_public_data(pair.algorithm, pair.public_data, "ssh-agent")
        if info is not None:
            found.append(info)
    return found


def explain_refusal(certs: Sequence[CertificateInfo], user: str | None) -> str | None:
    """The reason to report when a login with these certificates on offer was refused: only
    if *every* offered certificate has a problem (a usable one means the cause is elsewhere)."""
    problems = [c.problem(user) for c in certs]
    if not problems or any(p is None for p in problems):
        return None
    return problems[0]
