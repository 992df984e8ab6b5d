"""The auth-provider interface, as dagster-slurm names it (``dagster_slurm.auth.base``).

The transport owns it (:mod:`pixi_deploy.transport.auth`), because the transport is what
calls it, before every connect and reconnect; this module only gives it dagster-slurm's name.
"""

from __future__ import annotations

from pixi_deploy.transport.auth import AuthProvider, CertificateCommandProvider

__all__ = ["AuthProvider", "CertificateCommandProvider"]
