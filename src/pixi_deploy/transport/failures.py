"""Turn asyncssh/socket exceptions into one-line TransportErrors that say what to do.

Messages are built only from the destination, paths and exception *types* or server
reasons, never from credentials, so no password or key material can end up in them.
"""

from __future__ import annotations

import asyncio
import errno
import socket

import asyncssh

from pixi_deploy.errors import ConfigError, PixiDeployError, TransportError

from .hostkeys import HostKeyPolicy
from .settings import ENV_ACCEPT_NEW, ENV_CONNECT_TIMEOUT, ENV_KEY_PATH, ENV_PASSWORD

# Exceptions meaning "the connection is gone" (as opposed to a refused operation).
LOST = (
    asyncssh.ConnectionLost,
    asyncssh.DisconnectError,
    asyncssh.SFTPConnectionLost,
    asyncssh.SFTPNoConnection,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
)


class RemoteCommandError(TransportError):
    """A remote command exited non-zero while ``check=True``."""

    def __init__(self, message: str, hint: str | None, exit_status: int, stderr: str) -> None:
        super().__init__(message, hint)
        self.exit_status = exit_status
        self.stderr = stderr


class ConnectionLostError(TransportError):
    """The connection dropped in the middle of an operation; reconnecting may resume it."""


class RemoteFileNotFoundError(TransportError):
    """A remote path read through SFTP does not exist."""


class PermanentConnectError(TransportError):
    """Retrying cannot help (authentication, host key, configuration)."""


def one_line(text: str, limit: int = 300) -> str:
    """Collapse whitespace so server-provided text cannot break the one-line rule."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def connect_error(
    exc: BaseException, where: str, policy: HostKeyPolicy | None, timeout: float
) -> PixiDeployError:
    """Map an exception raised while connecting to ``where`` (``user@host:port``)."""
    if isinstance(exc, PixiDeployError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) and policy is not None:
        return _host_key_error(where, policy)
    if isinstance(exc, asyncssh.PermissionDenied):
        return PermanentConnectError(
            f"authentication to {where} was refused (permission denied)",
            f"check the user name and {ENV_KEY_PATH} / {ENV_PASSWORD} (or ssh-agent)",
        )
    if isinstance(exc, asyncssh.KeyEncryptionError):
        return ConfigError(
            "the SSH private key is protected by a passphrase pixi-deploy cannot ask for",
            "load it into ssh-agent or use an unencrypted deployment key",
        )
    if isinstance(exc, asyncssh.KeyImportError):
        return ConfigError(
            "the SSH private key file could not be read as a private key",
            f"point {ENV_KEY_PATH} at an OpenSSH/PEM private key",
        )
    if isinstance(exc, ConnectionRefusedError):
        return TransportError(
            f"nothing is listening for SSH at {where} (connection refused)",
            "check the host and port, and that sshd runs there",
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError | socket.timeout):
        return TransportError(
            f"no SSH answer from {where} within {timeout:g}s",
            f"check network/VPN/firewall, or raise {ENV_CONNECT_TIMEOUT}",
        )
    if isinstance(exc, socket.gaierror):
        return PermanentConnectError(
            f"the host name in {where} cannot be resolved",
            "check the host name or your ~/.ssh/config alias",
        )
    if isinstance(exc, LOST):
        return TransportError(
            f"the SSH connection to {where} was lost: {_reason(exc)}",
            "check the network; pixi-deploy reconnects on the next call",
        )
    if isinstance(exc, asyncssh.Error):
        return TransportError(f"SSH to {where} failed: {_reason(exc)}", "check sshd on the host")
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return TransportError(
            f"{where} is unreachable (no route to host)", "check the network or VPN"
        )
    if isinstance(exc, OSError):
        return TransportError(
            f"cannot connect to {where}: {exc.strerror or type(exc).__name__}",
            "check host, port and network",
        )
    return TransportError(f"cannot connect to {where}: {type(exc).__name__}")


def _host_key_error(where: str, policy: HostKeyPolicy) -> PixiDeployError:
    host, port = policy.pattern, None
    if host.startswith("["):
        host, port = host[1:].split("]:")
    keyscan = f"ssh-keyscan {f'-p {port} ' if port else ''}{host} >> {policy.path}"
    if policy.verdict == "changed":
        return PermanentConnectError(
            f"WARNING: the host key of {policy.pattern} has CHANGED "
            f"(now {policy.fingerprint}); this may be a man-in-the-middle attack",
            f"if the admins re-keyed it, verify and run: ssh-keygen -R '{policy.pattern}' "
            f"-f {policy.path}",
        )
    return PermanentConnectError(
        f"the host key of {policy.pattern or where} ({policy.fingerprint}) is not in {policy.path}",
        f"verify it and add it with: {keyscan} (or set {ENV_ACCEPT_NEW}=1 once)",
    )


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    return one_line(reason)
