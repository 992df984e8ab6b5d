"""Run commands in deployed environments as Slurm jobs, over the process's one SSH connection.

``SlurmClient.submit(JobSpec(...))`` returns a :class:`Job`; ``Job.wait()`` follows it (live
logs, running-time timeout, Ctrl-C cancels) and returns a :class:`JobResult`.
:class:`SlurmSession` holds one allocation for many quick steps. :class:`Executor` runs Python
functions as jobs (submitit's model) and returns their values.
"""

from __future__ import annotations

from pixi_deploy.launchers import BashLauncher, Launcher, RayLauncher

from .client import SlurmClient
from .executor import Executor
from .function_job import FunctionJob, RemoteFunctionError, UncompletedJobError
from .job import Job
from .jobenv import JobEnvironment
from .session import SlurmSession
from .spec import FINAL_STATES, JobResources, JobResult, JobSpec, JobStatus

__all__ = [
    "FINAL_STATES",
    "BashLauncher",
    "Executor",
    "FunctionJob",
    "Job",
    "JobEnvironment",
    "JobResources",
    "JobResult",
    "JobSpec",
    "JobStatus",
    "Launcher",
    "RayLauncher",
    "RemoteFunctionError",
    "SlurmClient",
    "SlurmSession",
    "UncompletedJobError",
]
