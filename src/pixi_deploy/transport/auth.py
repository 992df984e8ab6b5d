"""Auth providers: a hook that makes credentials valid right before each SSH connect.

Short-lived SSH certificates (hours) outlive no Dagster deployment: something has to renew
them. dagster-slurm's answer, kept here with the same interface, is an object with
``ensure()`` that the connection calls before every connect and reconnect. The transport
runs it off its event loop (it may call a CA or a subprocess) and turns a failure into one
clear line instead of a later "permission denied".

:class:`CertificateCommandProvider` is the generic provider: it runs a command of yours
(``step ssh login ...``, a site script) whenever the certificate is missing or expires within
``refresh_skew_minutes``, then checks that the command really produced a usable one.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pixi_deploy.errors import ConfigError, PixiDeployError

from .certificates import CertificateInfo, certificate_for_key, format_time, read_certificate_file


@runtime_checkable
class AuthProvider(Protocol):
    """Called before every SSH connect; raises if it cannot make the credentials valid."""

    def ensure(self) -> None: ...


def run_auth_provider(provider: AuthProvider, where: str) -> None:
    """Call ``provider.ensure()``; any failure becomes a one-line ConfigError (exit 7)."""
    try:
        provider.ensure()
    except PixiDeployError:
        raise
    except Exception as exc:  # a third-party provider: keep its message, not its traceback
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ConfigError(
            f"the auth provider {type(provider).__name__} could not prepare the login to "
            f"{where}: {text}",
            "fix the provider's settings, or renew the credentials by hand",
        ) from None


def find_certificate(path: str | Path) -> CertificateInfo | None:
    """``path`` may name the certificate itself or the private key it belongs to."""
    text = str(Path(path).expanduser())
    if text.endswith(("-cert.pub", ".crt")):
        return read_certificate_file(text)
    return certificate_for_key(text) or read_certificate_file(text)


@dataclass
class CertificateCommandProvider:
    """Renew an SSH certificate with ``command`` when it is missing or about to expire.

    ``cert_path`` is the certificate (``id_ed25519-cert.pub``) or the key it belongs to.
    ``command`` is an argument list run without a shell (so nothing in it is re-parsed);
    put no secrets in it: command lines are visible to other users of the machine.
    """

    cert_path: str
    command: Sequence[str]
    refresh_skew_minutes: float = 30.0
    timeout: float = 300.0
    env: dict[str, str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.command, str) or not self.command:
            raise ConfigError(
                "CertificateCommandProvider needs the command as a non-empty argument list",
                "e.g. ['step', 'ssh', 'login', 'me@example.org']",
            )

    def needs_renewal(self) -> bool:
        cert = find_certificate(self.cert_path)
        return cert is None or cert.seconds_left() <= self.refresh_skew_minutes * 60

    def ensure(self) -> None:
        if not self.needs_renewal():
            return
        try:
            proc = subprocess.run(
                list(self.command),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=self.env,
                check=False,
            )
        except FileNotFoundError:
            raise ConfigError(
                f"the certificate renewal command {self.command[0]!r} was not found",
                "install it or fix the command",
            ) from None
        except subprocess.TimeoutExpired:
            raise ConfigError(
                f"the certificate renewal command did not finish within {self.timeout:g}s"
            ) from None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [""])[-1][:200]
            raise ConfigError(
                f"the certificate renewal command exited with status {proc.returncode}"
                + (f": {last}" if last else ""),
                "run it by hand to see what it needs",
            )
        cert = find_certificate(self.cert_path)
        if cert is None:
            raise ConfigError(
                f"the certificate renewal command ran but left no certificate at {self.cert_path}",
                "point cert_path at the file the command writes",
            )
        if cert.seconds_left() <= 0:
            raise ConfigError(
                f"the certificate renewal command ran but {cert.source} still expired at "
                f"{format_time(cert.valid_before)}"
            )
