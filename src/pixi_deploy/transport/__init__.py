"""SSH transport to the cluster's edge node: one asyncssh connection per process.

Everything that talks to the cluster (commands, uploads, log streams) goes through
:func:`get_transport`, so connections, host-key checks, quoting and error messages are
handled in one place.
"""

from __future__ import annotations

from .auth import AuthProvider, CertificateCommandProvider
from .certificates import CertificateInfo
from .connection import LineStream, Transport, close_all, get_transport
from .failures import ConnectionLostError, RemoteCommandError, RemoteFileNotFoundError
from .quoting import command_line, join, quote, sh_c
from .session import CommandResult, TransportStats
from .settings import Secret, SSHSettings

__all__ = [
    "AuthProvider",
    "CertificateCommandProvider",
    "CertificateInfo",
    "CommandResult",
    "ConnectionLostError",
    "LineStream",
    "RemoteCommandError",
    "RemoteFileNotFoundError",
    "SSHSettings",
    "Secret",
    "Transport",
    "TransportStats",
    "close_all",
    "command_line",
    "get_transport",
    "join",
    "quote",
    "sh_c",
]
