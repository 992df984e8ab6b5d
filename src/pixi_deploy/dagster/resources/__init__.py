"""Dagster resources that describe the cluster (dagster-slurm's ``dagster_slurm.resources``).

Underneath, everything goes through pixi-deploy's one shared SSH transport per process and its
Slurm client, not through ssh/scp subprocesses.
"""

from __future__ import annotations

from .session import (
    SessionResource,
    SlurmAllocationScope,
    SlurmRunAllocationConfig,
    allocation_resources,
)
from .slurm import SlurmQueueConfig, SlurmResource
from .ssh import SSHConnectionResource

SSHConnectionResource.model_rebuild()  # jump_host refers to the class itself

#: dagster-slurm's name for :class:`SessionResource`.
SlurmSessionResource = SessionResource

__all__ = [
    "SSHConnectionResource",
    "SessionResource",
    "SlurmAllocationScope",
    "SlurmQueueConfig",
    "SlurmResource",
    "SlurmRunAllocationConfig",
    "SlurmSessionResource",
    "allocation_resources",
]
