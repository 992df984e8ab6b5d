"""How to reach the edge node: one frozen, hashable settings object.

The names mirror the environment variables users already know from the docs
(``SLURM_EDGE_NODE_*``) so that a setting has the same name everywhere. The object is
hashable because :func:`~pixi_deploy.transport.get_transport` keys the process-wide
connection on it, and the password is wrapped in :class:`Secret` so that it cannot leak
through ``repr()``, logging or exception messages by accident.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pixi_deploy.errors import ConfigError

if TYPE_CHECKING:
    from .auth import AuthProvider

ENV_HOST = "SLURM_EDGE_NODE_HOST"
ENV_PORT = "SLURM_EDGE_NODE_PORT"
ENV_USER = "SLURM_EDGE_NODE_USER"
ENV_KEY_PATH = "SLURM_EDGE_NODE_KEY_PATH"
ENV_PASSWORD = "SLURM_EDGE_NODE_PASSWORD"  # noqa: S105 - the variable's name, not a secret
ENV_KNOWN_HOSTS = "SLURM_EDGE_NODE_KNOWN_HOSTS"
ENV_ACCEPT_NEW = "SLURM_EDGE_NODE_ACCEPT_NEW_HOST_KEY"
ENV_SSH_CONFIG = "SLURM_EDGE_NODE_SSH_CONFIG"
ENV_CONNECT_TIMEOUT = "SLURM_EDGE_NODE_CONNECT_TIMEOUT"
ENV_BASE_PATH = "SLURM_DEPLOYMENT_BASE_PATH"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


class Secret:
    """A string that refuses to print itself; call :meth:`reveal` where it is really needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The plain value, for handing to asyncssh and nothing else."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")


def _default_known_hosts() -> Path:
    return Path("~/.ssh/known_hosts").expanduser()


def _default_ssh_config() -> Path:
    return Path("~/.ssh/config").expanduser()


@dataclass(frozen=True)
class SSHSettings:
    """Where and how to log in to the edge node.

    ``host`` may be a ``~/.ssh/config`` alias: ``HostName``, ``User``, ``Port``,
    ``IdentityFile``, ``CertificateFile`` and ``ProxyJump`` from that file apply unless
    overridden here. With neither ``key_path`` nor ``password``, ssh-agent (certificates
    included) and the config's identities are used; a certificate ``<key>-cert.pub`` beside
    ``key_path`` is offered with the key. ``port=None`` means "from ssh config, else 22".

    ``jump`` is a login host to tunnel through with its *own* credentials and known_hosts
    (like ``ssh -J``, but each hop checked and authenticated as configured here).
    ``auth_provider.ensure()`` runs before every connect, e.g. to renew a short-lived SSH
    certificate. ``post_login_command`` wraps every remote command (``"{cmd}"`` in it is
    replaced by ``sh -c '<command>'``, otherwise it runs as ``TEMPLATE && <command>``), and
    ``force_tty`` gives commands without input a pseudo-terminal, for login nodes that need
    one. ``check_host_keys=False`` turns host-key checking off; it is never the default.
    """

    host: str
    port: int | None = None
    user: str | None = None
    key_path: Path | None = None
    password: Secret | None = field(default=None, repr=False)
    known_hosts: Path = field(default_factory=_default_known_hosts)
    accept_new_host_key: bool = False
    ssh_config: Path | None = field(default_factory=_default_ssh_config)
    base_path: str | None = None
    connect_timeout: float = 15.0
    keepalive_interval: float = 30.0
    jump: SSHSettings | None = None
    auth_provider: AuthProvider | None = field(default=None, compare=False, repr=False)
    post_login_command: str | None = None
    force_tty: bool = False
    check_host_keys: bool = True
    # settings with different provider objects must not share one connection, and providers
    # (often dataclasses) need not be hashable: compare them by identity
    auth_provider_id: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "auth_provider_id", None if self.auth_provider is None else id(self.auth_provider)
        )
        if self.auth_provider is not None and not callable(
            getattr(self.auth_provider, "ensure", None)
        ):
            raise ConfigError(
                f"the auth provider {type(self.auth_provider).__name__} has no ensure() method",
                "pass an object whose ensure() makes the credentials valid before a connect",
            )
        if self.post_login_command is not None and (
            not self.post_login_command.strip() or "\n" in self.post_login_command
        ):
            raise ConfigError(
                "post_login_command must be one non-empty line",
                "e.g. 'module load slurm' or 'vsc5 {cmd}'",
            )
        if self.jump is not None and self.jump.jump is not None:
            raise ConfigError(
                "a jump host with its own jump host is not supported",
                "chain hops with ProxyJump in ~/.ssh/config instead",
            )
        if not self.host or not self.host.strip():
            raise ConfigError(
                "the edge node host is empty", f"set {ENV_HOST} to a host name or ssh alias"
            )
        if isinstance(self.password, str):  # accept a plain str, store it wrapped
            object.__setattr__(self, "password", Secret(self.password))
        if self.key_path is not None:
            object.__setattr__(self, "key_path", Path(self.key_path).expanduser())
        object.__setattr__(self, "known_hosts", Path(self.known_hosts).expanduser())
        if self.ssh_config is not None:
            object.__setattr__(self, "ssh_config", Path(self.ssh_config).expanduser())
        if self.key_path is not None and self.password is not None:
            raise ConfigError(
                f"both {ENV_KEY_PATH} and {ENV_PASSWORD} are set",
                "set exactly one of them",
            )
        if self.port is not None and not 0 < int(self.port) < 65536:
            raise ConfigError(f"{ENV_PORT}={self.port} is not a TCP port", "use 1-65535")
        if self.connect_timeout <= 0:
            raise ConfigError(
                f"{ENV_CONNECT_TIMEOUT}={self.connect_timeout} must be positive",
                "use a number of seconds such as 15",
            )

    @property
    def destination(self) -> str:
        """``user@host:port`` as far as known before reading ssh config; safe to print."""
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port else ""
        return f"{user}{self.host}{port}"

    def with_changes(self, **changes: object) -> SSHSettings:
        """A copy with some fields replaced (validation runs again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SSHSettings:
        """Read the ``SLURM_EDGE_NODE_*`` variables; exactly one of key path or password.

        Everything is validated here, so a typo fails before any connection is tried.
        """
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name)
            return value if value not in (None, "") else None

        host = get(ENV_HOST)
        if host is None:
            raise ConfigError(
                f"{ENV_HOST} is not set", "set it to the edge node's host name or ssh alias"
            )
        key = get(ENV_KEY_PATH)
        password = get(ENV_PASSWORD)
        if key is not None and password is not None:
            raise ConfigError(
                f"both {ENV_KEY_PATH} and {ENV_PASSWORD} are set", "set exactly one of them"
            )
        if key is None and password is None:
            raise ConfigError(
                f"neither {ENV_KEY_PATH} nor {ENV_PASSWORD} is set", "set exactly one of them"
            )
        key_path = Path(key).expanduser() if key else None
        if key_path is not None and not key_path.is_file():
            raise ConfigError(
                f"{ENV_KEY_PATH} names {key_path}, which is not a readable file",
                "point it at your private key",
            )
        return cls(
            host=host,
            port=_int(ENV_PORT, get(ENV_PORT)),
            user=get(ENV_USER),
            key_path=key_path,
            password=Secret(password) if password is not None else None,
            known_hosts=Path(get(ENV_KNOWN_HOSTS) or _default_known_hosts()),
            accept_new_host_key=_bool(ENV_ACCEPT_NEW, env.get(ENV_ACCEPT_NEW, "")),
            ssh_config=Path(get(ENV_SSH_CONFIG) or _default_ssh_config()),
            base_path=get(ENV_BASE_PATH),
            connect_timeout=_float(ENV_CONNECT_TIMEOUT, get(ENV_CONNECT_TIMEOUT), 15.0),
        )


def _int(name: str, raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", "use a TCP port such as 22") from None


def _float(name: str, raw: str | None, default: float) -> float:
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", "use seconds, e.g. 15") from None


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a yes/no value", "use 1 or 0")
