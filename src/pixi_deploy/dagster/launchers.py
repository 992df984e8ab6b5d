"""Launchers as Dagster-configurable resources, turned into the core launchers at submit time.

The core launchers (:mod:`pixi_deploy.launchers`) are plain classes that render bash; Dagster
needs Pydantic models it can show in the UI and nest in ``ComputeResource``. These wrappers are
that configuration and nothing else: ``to_core()`` builds the real launcher, so the bash a job
runs is the same whether it was submitted from Dagster or from the CLI.
"""

from __future__ import annotations

import inspect
from typing import Any

import dagster as dg
from pydantic import Field


class ComputeLauncher(dg.ConfigurableResource):
    """Base class: how the payload is started inside the allocation (after activation)."""

    def to_core(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class BashLauncher(ComputeLauncher):
    """Run the payload as a plain command in the job's shell (the default).

    ``activate_sh`` is accepted for dagster-slurm compatibility and ignored: the job script
    activates the deployed environment itself.
    """

    activate_sh: str | None = Field(default=None, description="Unused (dagster-slurm compat)")

    def to_core(self) -> Any:
        from pixi_deploy.launchers import BashLauncher as CoreBash

        return CoreBash()


class RayLauncher(ComputeLauncher):
    """Start a Ray cluster across the allocation's nodes around the payload (the driver).

    Only the options set here are passed on; anything else keeps the core launcher's default.
    """

    dashboard_host: str = Field(default="127.0.0.1", description="Ray dashboard bind address")
    dashboard_port: int | None = Field(default=None, description="Ray dashboard port")
    num_gpus_per_node: int | None = Field(default=None, description="GPUs per node for Ray")
    num_cpus_per_node: int | None = Field(default=None, description="CPUs per node for Ray")
    object_store_memory_gb: int | None = Field(default=None, description="Object store size")
    ray_address: str | None = Field(default=None, description="Join this cluster instead")
    ray_start_args: list[str] = Field(default_factory=list, description="More `ray start` args")
    activate_sh: str | None = Field(default=None, description="Unused (dagster-slurm compat)")

    def to_core(self) -> Any:
        from pixi_deploy.launchers import RayLauncher as CoreRay

        wanted = {
            k: v for k, v in self.model_dump().items() if k != "activate_sh" and v not in (None, [])
        }
        accepted = inspect.signature(CoreRay).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        kwargs = {k: v for k, v in wanted.items() if takes_any or k in accepted}
        return CoreRay(**kwargs)
