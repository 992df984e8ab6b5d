"""Open one authenticated asyncssh connection, through a jump host or ProxyJump chain.

ProxyJump is resolved here rather than by asyncssh so that every hop is checked with the
same known_hosts policy (asyncssh would use its defaults for the hops). An explicit jump
host (``SSHSettings.jump``) is a connection of its own, with its own credentials and
known_hosts; the target is then reached through a tunnel over it. Before each connect the
settings' auth provider may renew credentials; after a refused login the certificates that
were on offer are checked, so that "your certificate expired at 10:00" replaces "permission
denied".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncssh

from . import certificates
from .auth import run_auth_provider
from .failures import PermanentConnectError, connect_error
from .hostkeys import HostKeyPolicy, PolicyClient
from .settings import SSHSettings

log = logging.getLogger("pixi_deploy.transport")


def config_paths(settings: SSHSettings) -> list[str]:
    """The ssh config files to honour (none if the file does not exist)."""
    path = settings.ssh_config
    return [str(path)] if path is not None and path.is_file() else []


def _split_hop(hop: str) -> tuple[str | None, str, int | None]:
    user, _, hostport = hop.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, port_text = hostport.split(":")
        port = int(port_text)
    return (user or None), host, port


async def _connect_one(
    settings: SSHSettings,
    host: str,
    port: int | None,
    user: str | None,
    tunnel: asyncssh.SSHClientConnection | None,
    credentials: bool,
    on_lost: Callable[[], None] | None,
) -> asyncssh.SSHClientConnection:
    policy = HostKeyPolicy(settings.known_hosts, settings.accept_new_host_key)
    if not settings.check_host_keys:
        log.warning("host-key checking is OFF for %s (host_key_checking='off')", host)
    kwargs: dict[str, Any] = {
        "config": config_paths(settings),
        "known_hosts": policy.known if settings.check_host_keys else None,
        "client_factory": lambda: PolicyClient(policy, on_lost),
        "connect_timeout": settings.connect_timeout,
        "keepalive_interval": settings.keepalive_interval,
        "keepalive_count_max": 3,
        "tunnel": tunnel,
        # AES-GCM runs on the CPU's AES instructions: ~2x the throughput of asyncssh's default
        # (chacha20) for uploads. The others stay as fallbacks for servers that lack it.
        "encryption_algs": PREFERRED_CIPHERS,
        "window": WINDOW_BYTES,
        "max_pktsize": MAX_PACKET_BYTES,
    }
    if port is not None:
        kwargs["port"] = port
    if user is not None:
        kwargs["username"] = user
    if credentials:
        kwargs.update(_credentials(settings))
    where = f"{user + '@' if user else ''}{host}{f':{port}' if port else ''}"
    try:
        return await asyncssh.connect(host, **kwargs)
    except asyncssh.PermissionDenied as exc:
        reason = await _certificate_reason(settings, host, port, user, kwargs)
        if reason is None:
            raise connect_error(exc, where, policy, settings.connect_timeout) from None
        raise PermanentConnectError(
            f"authentication to {where} was refused: {reason}",
            "renew the certificate (e.g. `step ssh login`), or set an auth provider that "
            "renews it before each connect",
        ) from None
    except (TimeoutError, asyncssh.Error, OSError, ValueError) as exc:
        raise connect_error(exc, where, policy, settings.connect_timeout) from None


def _credentials(settings: SSHSettings) -> dict[str, Any]:
    """How this hop logs in: the key (with ``<key>-cert.pub`` if present), the password, or
    (neither) asyncssh's defaults: ssh-agent and the config's identities and certificates."""
    if settings.key_path is not None:
        return {
            "client_keys": [str(settings.key_path)],
            "agent_path": None,
            "preferred_auth": "publickey",
        }
    if settings.password is not None:
        return {
            "password": settings.password.reveal(),
            "client_keys": None,
            "agent_path": None,
            "preferred_auth": "keyboard-interactive,password",
        }
    return {}


async def _certificate_reason(
    settings: SSHSettings, host: str, port: int | None, user: str | None, kwargs: dict[str, Any]
) -> str | None:
    """If every certificate this login offered is unusable, say why (expired, not yet valid,
    wrong principal); None if no certificate was involved or one of them was fine."""
    if settings.password is not None:
        return None
    option_kwargs = {
        k: kwargs[k] for k in ("config", "client_keys", "agent_path", "username") if k in kwargs
    }
    try:
        options = asyncssh.SSHClientConnectionOptions(
            host=host, port=port if port is not None else (), **option_kwargs
        )
    except (OSError, asyncssh.Error, ValueError):
        return None
    offered = certificates.local_certificates(options)
    offered += await certificates.agent_certificates(getattr(options, "agent_path", None))
    login = user or getattr(options, "username", None)
    return certificates.explain_refusal(offered, login)


PREFERRED_CIPHERS = [
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]
WINDOW_BYTES = 16 * 1024 * 1024
MAX_PACKET_BYTES = 256 * 1024


async def open_connection(
    settings: SSHSettings, on_lost: Callable[[], None] | None = None
) -> asyncssh.SSHClientConnection:
    """Connect to the edge node (through its jump host or ProxyJump hops) and log in."""
    if settings.auth_provider is not None:
        await asyncio.get_running_loop().run_in_executor(
            None, run_auth_provider, settings.auth_provider, settings.destination
        )
    if settings.jump is not None:
        via = await open_connection(settings.jump)
        try:
            conn = await _connect_one(
                settings, settings.host, settings.port, settings.user, via, True, on_lost
            )
        except BaseException:
            via.close()
            raise
        conn.set_tunnel(via)  # closing the connection closes the jump host's too
        return conn
    options = asyncssh.SSHClientConnectionOptions(
        config=config_paths(settings),
        host=settings.host,
        port=settings.port if settings.port is not None else (),
    )
    jump = options.tunnel if isinstance(options.tunnel, str) else None
    tunnel: asyncssh.SSHClientConnection | None = None
    if jump and jump.lower() != "none":
        for hop in jump.split(","):
            user, host, port = _split_hop(hop.strip())
            hop_conn = await _connect_one(settings, host, port, user, tunnel, False, None)
            if tunnel is not None:
                hop_conn.set_tunnel(tunnel)
            tunnel = hop_conn
    try:
        conn = await _connect_one(
            settings, settings.host, settings.port, settings.user, tunnel, True, on_lost
        )
    except BaseException:
        if tunnel is not None:
            tunnel.close()
        raise
    if tunnel is not None:
        conn.set_tunnel(tunnel)  # closing the connection closes the hops too
    return conn
