"""Open one authenticated asyncssh connection, following ProxyJump chains from ssh config.

ProxyJump is resolved here rather than by asyncssh so that every hop is checked with the
same known_hosts policy (asyncssh would use its defaults for the hops).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import asyncssh

from .failures import connect_error
from .hostkeys import HostKeyPolicy, PolicyClient
from .settings import SSHSettings


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
    kwargs: dict[str, Any] = {
        "config": config_paths(settings),
        "known_hosts": policy.known,
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
    if credentials and settings.key_path is not None:
        kwargs.update(client_keys=[str(settings.key_path)], agent_path=None)
        kwargs["preferred_auth"] = "publickey"
    elif credentials and settings.password is not None:
        kwargs.update(password=settings.password.reveal(), client_keys=None, agent_path=None)
        kwargs["preferred_auth"] = "keyboard-interactive,password"
    where = f"{user + '@' if user else ''}{host}{f':{port}' if port else ''}"
    try:
        return await asyncssh.connect(host, **kwargs)
    except (TimeoutError, asyncssh.Error, OSError, ValueError) as exc:
        raise connect_error(exc, where, policy, settings.connect_timeout) from None


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
    """Connect to the edge node (through its ProxyJump hops, if any) and log in."""
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
