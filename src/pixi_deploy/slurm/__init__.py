"""Run commands in deployed environments as Slurm jobs, over the process's one SSH connection.

``SlurmClient.submit(JobSpec(...))`` returns a :class:`Job`; ``Job.wait()`` follows it (live
logs, running-time timeout, Ctrl-C cancels) and returns a :class:`JobResult`.
:class:`SlurmSession` holds one allocation for many quick steps.
"""

from __future__ import annotations

from pixi_deploy.launchers import BashLauncher, Launcher, RayLauncher

from .client import SlurmClient
from .job import Job
from .session import SlurmSession
from .spec import FINAL_STATES, JobResources, JobResult, JobSpec, JobStatus

__all__ = [
    "FINAL_STATES",
    "BashLauncher",
    "Job",
    "JobResources",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "Launcher",
    "RayLauncher",
    "SlurmClient",
    "SlurmSession",
]
