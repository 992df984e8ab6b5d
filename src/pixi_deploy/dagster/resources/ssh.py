"""SSHConnectionResource: how to log in to the edge node, with dagster-slurm's fields.

pixi-deploy speaks SSH itself (asyncssh, one shared connection per process), so every field
maps onto :class:`pixi_deploy.transport.SSHSettings` rather than onto ``ssh`` options:
``jump_host`` becomes a real jump connection with its own login and known_hosts,
``host_key_checking`` the host-key policy, ``post_login_command`` and ``force_tty`` wrap the
remote commands. ``extra_opts`` (raw OpenSSH options) cannot apply and are refused: put such
settings in an ssh config file (``ssh_config=...``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pixi_deploy.dagster.strict import StrictResource, refuse
from pixi_deploy.errors import ConfigError
from pixi_deploy.transport import SSHSettings, Transport, get_transport
from pixi_deploy.transport.auth import AuthProvider

HostKeyChecking = Literal["off", "accept-new", "strict"]
# the documented packaging variables first, then dagster-slurm's own names
ENV_FAMILIES = ("SLURM_EDGE_NODE", "SLURM_SSH")
_ENV_SUFFIXES: dict[str, tuple[str, ...]] = {
    "host": ("HOST",),
    "port": ("PORT",),
    "user": ("USER",),
    "key_path": ("KEY_PATH", "KEY"),
    "password": ("PASSWORD",),
    "known_hosts_file": ("KNOWN_HOSTS_FILE", "KNOWN_HOSTS"),
    "host_key_checking": ("HOST_KEY_CHECKING",),
    "accept_new_host_key": ("ACCEPT_NEW_HOST_KEY",),
    "force_tty": ("FORCE_TTY",),
    "post_login_command": ("POST_LOGIN_COMMAND",),
    "extra_opts": ("OPTS_EXTRA",),
    "ssh_config": ("SSH_CONFIG",),
}
_TRUE = ("1", "true", "yes", "on")


class SSHConnectionResource(StrictResource):
    """Login to the edge node: key, password, or ssh-agent / ssh config (``host`` may be an
    alias there). Host keys are checked against ``known_hosts_file`` (default
    ``~/.ssh/known_hosts``); ``host_key_checking='accept-new'`` trusts an unknown host once,
    ``'off'`` stops checking (never the default)."""

    host: str = Field(description="Edge node host name, IP or ~/.ssh/config alias")
    port: int | None = Field(default=None, description="SSH port (default: ssh config, else 22)")
    user: str | None = Field(default=None, description="Login user (default: ssh config/local)")
    key_path: str | None = Field(default=None, description="Private key (<key>-cert.pub too)")
    password: str | None = Field(default=None, description="Password (password login)")
    force_tty: bool = Field(default=False, description="Give commands a pseudo-terminal")
    post_login_command: str | None = Field(
        default=None, description="Run before every command ('{cmd}' marks where it goes)"
    )
    jump_host: SSHConnectionResource | None = Field(
        default=None, description="Log in here first and tunnel through it (ssh -J)"
    )
    extra_opts: list[str] = Field(
        default_factory=list, description="Raw OpenSSH options: refused (use ssh_config)"
    )
    host_key_checking: HostKeyChecking = Field(
        default="strict", description="'strict', 'accept-new' or 'off'"
    )
    known_hosts_file: str | None = Field(default=None, description="known_hosts to check against")
    known_hosts: str | None = Field(default=None, description="Same as known_hosts_file")
    accept_new_host_key: bool = Field(default=False, description="Same as 'accept-new'")
    ssh_config: str | None = Field(default=None, description="ssh config file (default ~/.ssh)")

    @field_validator("key_path", "known_hosts_file", "known_hosts", "ssh_config")
    @classmethod
    def _expand(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("a path setting is empty; leave it out instead")
        return str(Path(value).expanduser())

    @model_validator(mode="after")
    def _check(self) -> SSHConnectionResource:
        if self.key_path and self.password:
            raise ValueError("set either key_path or password for the SSH login, not both")
        if self.key_path and not Path(self.key_path).is_file():
            raise ValueError(f"SSH key not found: {self.key_path}")
        if self.extra_opts:
            raise refuse(
                "SSHConnectionResource",
                "extra_opts",
                f"{shlex.join(self.extra_opts)} are OpenSSH command-line options and "
                "pixi-deploy speaks SSH itself; put them in an ssh config file (ssh_config=...)",
            )
        if self.known_hosts and self.known_hosts_file and self.known_hosts != self.known_hosts_file:
            raise ValueError("known_hosts and known_hosts_file name different files")
        if self.accept_new_host_key and self.host_key_checking == "off":
            raise ValueError("accept_new_host_key contradicts host_key_checking='off'")
        if self.jump_host is not None and self.jump_host.jump_host is not None:
            raise ValueError("a jump host with its own jump host is not supported")
        if self.post_login_command is not None and (
            not self.post_login_command.strip() or "\n" in self.post_login_command
        ):
            raise ValueError("post_login_command must be one non-empty line")
        return self

    # -- environment ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, prefix: str | None = None, _is_jump: bool = False) -> SSHConnectionResource:
        """Read ``SLURM_EDGE_NODE_*`` (pixi-deploy's documented names) and dagster-slurm's
        ``SLURM_SSH_*``: ``_HOST``, ``_PORT``, ``_USER``, ``_KEY_PATH``/``_KEY``, ``_PASSWORD``,
        ``_KNOWN_HOSTS_FILE``/``_KNOWN_HOSTS``, ``_HOST_KEY_CHECKING``, ``_FORCE_TTY``,
        ``_POST_LOGIN_COMMAND``, ``_SSH_CONFIG``, and ``{prefix}_JUMP_*`` for a jump host.

        With ``prefix`` only that family is read (a trailing ``_`` is fine, as dagster-slurm's
        docs write it); without, both are, and a setting given differently in both is an error.
        """
        families = (prefix.rstrip("_"),) if prefix else ENV_FAMILIES
        values = _read_env(os.environ, families)
        if "host" not in values:
            raise ConfigError(
                f"{families[0]}_HOST is not set", "set it to the edge node's host name or alias"
            )
        kwargs: dict[str, Any] = dict(values)
        if "port" in kwargs:
            kwargs["port"] = _int(kwargs["port"], f"{families[0]}_PORT")
        for flag in ("force_tty", "accept_new_host_key"):
            if flag in kwargs:
                kwargs[flag] = kwargs[flag].lower() in _TRUE
        if "host_key_checking" in kwargs:
            kwargs["host_key_checking"] = kwargs["host_key_checking"].lower()
        if "extra_opts" in kwargs:
            kwargs["extra_opts"] = shlex.split(kwargs["extra_opts"])
        if not _is_jump:
            jump_families = [f"{f}_JUMP" for f in families if os.environ.get(f"{f}_JUMP_HOST")]
            if jump_families:
                kwargs["jump_host"] = cls.from_env(prefix=jump_families[0], _is_jump=True)
        return cls(**kwargs)

    # -- transport ----------------------------------------------------------------------------
    def to_settings(
        self, base_path: str | None = None, auth_provider: AuthProvider | None = None
    ) -> SSHSettings:
        """The transport settings (the password is wrapped so that it cannot be printed)."""
        extra: dict[str, Any] = {}
        known = self.known_hosts_file or self.known_hosts
        if known:
            extra["known_hosts"] = Path(known)
        if self.ssh_config:
            extra["ssh_config"] = Path(self.ssh_config)
        return SSHSettings(
            host=self.host,
            port=self.port,
            user=self.user,
            key_path=Path(self.key_path) if self.key_path else None,
            password=self.password,  # type: ignore[arg-type]  # wrapped in Secret by SSHSettings
            accept_new_host_key=self.accept_new_host_key or self.host_key_checking == "accept-new",
            check_host_keys=self.host_key_checking != "off",
            base_path=base_path,
            jump=self.jump_host.to_settings() if self.jump_host is not None else None,
            auth_provider=auth_provider,
            post_login_command=self.post_login_command,
            force_tty=self.force_tty,
            **extra,
        )

    def transport(self, auth_provider: AuthProvider | None = None) -> Transport:
        """The process-wide shared connection for these settings (opened on first use)."""
        return get_transport(self.to_settings(auth_provider=auth_provider))


def _read_env(env: Mapping[str, str], families: tuple[str, ...]) -> dict[str, str]:
    found: dict[str, tuple[str, str]] = {}  # field -> (variable, value)
    for field_name, suffixes in _ENV_SUFFIXES.items():
        for family in families:
            for suffix in suffixes:
                name = f"{family}_{suffix}"
                value = (env.get(name) or "").strip()
                if not value:  # `FOO=` in a dotenv file means "not set"
                    continue
                if field_name in found and found[field_name][1] != value:
                    raise ConfigError(
                        f"{found[field_name][0]} and {name} disagree",
                        "set only one of them",
                    )
                found.setdefault(field_name, (name, value))
    return {k: v for k, (_, v) in found.items()}


def _int(raw: str, name: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number", "use a TCP port such as 22") from None
