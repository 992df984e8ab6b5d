"""Dagster integration (``pip install pixi-deploy[dagster]``): run asset payloads locally, as
Slurm jobs in a deployed pixi environment, or as steps of one shared allocation, with results,
logs and failures coming back through Dagster Pipes.

The names and fields follow dagster-slurm's resources, so definitions written for it work here;
only this package imports dagster, the rest of pixi-deploy never does.
"""

from __future__ import annotations

from .compute import MODES, ComputeResource, ExecutionMode
from .launchers import BashLauncher, ComputeLauncher, RayLauncher
from .pipes import (
    ExceptionCapturingReader,
    RemoteFileContextInjector,
    RemoteFileMessageReader,
    format_pipes_exception,
)
from .resources import SessionResource, SlurmQueueConfig, SlurmResource, SSHConnectionResource

#: dagster-slurm's name for :class:`SessionResource`.
SlurmSessionResource = SessionResource

__all__ = [
    "MODES",
    "BashLauncher",
    "ComputeLauncher",
    "ComputeResource",
    "ExceptionCapturingReader",
    "ExecutionMode",
    "RayLauncher",
    "RemoteFileContextInjector",
    "RemoteFileMessageReader",
    "SSHConnectionResource",
    "SessionResource",
    "SlurmQueueConfig",
    "SlurmResource",
    "SlurmSessionResource",
    "format_pipes_exception",
]
