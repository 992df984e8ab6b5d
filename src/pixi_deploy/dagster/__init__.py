"""Dagster integration (``pip install pixi-deploy[dagster]``): run asset payloads locally, as
Slurm jobs in a deployed pixi environment, as steps of one shared allocation, or as the
components of a heterogeneous job, with results, logs and failures coming back through
Dagster Pipes.

The names, modules and fields are dagster-slurm's (``pixi_deploy.dagster.config.environment``,
``pixi_deploy.dagster.auth.step_oidc``, ...), so definitions written for it work after changing
the import; settings whose feature pixi-deploy lacks are refused by name, never ignored. Only
this package imports dagster; the rest of pixi-deploy never does.
"""

from __future__ import annotations

from .auth import AuthProvider, CertificateCommandProvider, StepOIDCAuthProvider
from .compute import ComputeResource
from .config.environment import MODES, Environment, ExecutionMode
from .config.runtime import RuntimeVariant, SlurmRunConfig
from .launchers import BashLauncher, ComputeLauncher, RayLauncher, SparkLauncher
from .pipes import (
    ExceptionCapturingReader,
    RemoteFileContextInjector,
    RemoteFileMessageReader,
    format_pipes_exception,
)
from .resources import (
    SessionResource,
    SlurmAllocationScope,
    SlurmQueueConfig,
    SlurmResource,
    SlurmRunAllocationConfig,
    SlurmSessionResource,
    SSHConnectionResource,
)
from .unbuilt import (
    LocalPipesClient,
    SlurmAllocation,
    SlurmPipesClient,
    build_slurm_orphan_reconcile_sensor,
    reconcile_orphaned_slurm_runs,
)

__all__ = [
    "MODES",
    "AuthProvider",
    "BashLauncher",
    "CertificateCommandProvider",
    "ComputeLauncher",
    "ComputeResource",
    "Environment",
    "ExceptionCapturingReader",
    "ExecutionMode",
    "LocalPipesClient",
    "RayLauncher",
    "RemoteFileContextInjector",
    "RemoteFileMessageReader",
    "RuntimeVariant",
    "SSHConnectionResource",
    "SessionResource",
    "SlurmAllocation",
    "SlurmAllocationScope",
    "SlurmPipesClient",
    "SlurmQueueConfig",
    "SlurmResource",
    "SlurmRunAllocationConfig",
    "SlurmRunConfig",
    "SlurmSessionResource",
    "SparkLauncher",
    "StepOIDCAuthProvider",
    "build_slurm_orphan_reconcile_sensor",
    "format_pipes_exception",
    "reconcile_orphaned_slurm_runs",
]
