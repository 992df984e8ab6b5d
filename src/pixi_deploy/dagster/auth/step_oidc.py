"""StepOIDCAuthProvider: dagster-slurm's smallstep/OIDC provider, by name and settings.

dagster-slurm renews the certificate by fetching an OIDC token and running
``step ssh login --token <TOKEN>``: the token would sit on a command line, readable by every
user of the machine through ``ps``, which pixi-deploy does not do with credentials. So this
provider keeps every setting and checks the certificate before each connect exactly like
dagster-slurm (fine while it is valid for longer than ``refresh_skew_minutes``), but when it
would have to renew it stops with one line saying so and when the certificate expires. Renew
with ``step ssh login`` yourself, or use :class:`~pixi_deploy.transport.CertificateCommandProvider`
with a command that keeps the token off its command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pixi_deploy.errors import ConfigError
from pixi_deploy.transport.auth import find_certificate
from pixi_deploy.transport.certificates import CertificateInfo, format_time


@dataclass
class StepOIDCAuthProvider:
    """Check (not renew) a Step SSH certificate before each connect; see the module doc."""

    token_url: str
    client_id: str
    username: str
    app_password: str | None = field(default=None, repr=False)
    scope: str = "profile"
    token_field: str = "access_token"  # noqa: S105 - a JSON field name
    context: str = "asc"
    refresh_skew_minutes: int = 30
    cert_path: str | None = None
    ssh_key_path: str | None = None
    step_binary: str = "step"
    extra_step_args: list[str] = field(default_factory=list)
    bootstrap_ca_url: str | None = None
    bootstrap_fingerprint: str | None = None
    authentik_api_base: str | None = None
    authentik_api_token: str | None = field(default=None, repr=False)
    authentik_token_identifier: str = "dagster-slurm"  # noqa: S105 - a label
    authentik_token_expires_days: int = 30
    authentik_credentials_file: str | None = None
    authentik_refresh_skew_days: int = 7

    def certificate(self) -> CertificateInfo | None:
        """The certificate dagster-slurm would look at: ``cert_path`` (or the certificate of
        that key), that of ``ssh_key_path``, else step's ``~/.step/ssh/certs/<context>.crt``."""
        for candidate in (self.cert_path, self.ssh_key_path):
            if candidate:
                found = find_certificate(candidate)
                if found is not None:
                    return found
        return find_certificate(os.path.expanduser(f"~/.step/ssh/certs/{self.context}.crt"))

    def valid_until(self) -> datetime | None:
        cert = self.certificate()
        return None if cert is None else datetime.fromtimestamp(cert.valid_before, UTC)

    def ensure(self) -> None:
        cert = self.certificate()
        if cert is not None and cert.seconds_left() > self.refresh_skew_minutes * 60:
            return
        state = (
            "no Step SSH certificate was found"
            if cert is None
            else f"the Step SSH certificate {cert.source} expires at "
            f"{format_time(cert.valid_before)} (within {self.refresh_skew_minutes} min)"
        )
        raise ConfigError(
            f"{state}, and pixi-deploy does not renew it through StepOIDCAuthProvider (the "
            "OIDC token would be passed to `step ssh login` on its command line)",
            f"run `{self.step_binary} ssh login --context {self.context}` yourself, or use "
            "CertificateCommandProvider",
        )
