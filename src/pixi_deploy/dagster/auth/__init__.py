"""Auth providers (dagster-slurm's ``dagster_slurm.auth``): called before every SSH connect.

Attach one with ``SlurmResource.set_auth_provider(provider)``. :class:`AuthProvider` is the
interface (one method, ``ensure()``); :class:`CertificateCommandProvider` renews an SSH
certificate with a command of yours; :class:`StepOIDCAuthProvider` accepts dagster-slurm's
settings and checks the smallstep certificate (see its docstring for what it does not do).
"""

from __future__ import annotations

from .base import AuthProvider, CertificateCommandProvider
from .step_oidc import StepOIDCAuthProvider

__all__ = ["AuthProvider", "CertificateCommandProvider", "StepOIDCAuthProvider"]
