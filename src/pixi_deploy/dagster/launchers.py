"""Launchers as Dagster-configurable resources, turned into the core launchers at submit time.

The core launchers (:mod:`pixi_deploy.launchers`) are plain classes that render bash; Dagster
needs Pydantic models it can show in the UI and nest in ``ComputeResource``. These wrappers are
that configuration and nothing else: ``to_core()`` builds the real launcher, so the bash a job
runs is the same whether it was submitted from Dagster or from the CLI.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from pixi_deploy.errors import ConfigError


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
    """Start Ray across the allocation's nodes, run the payload as the driver (``RAY_ADDRESS``
    set), tear Ray down: the core :class:`pixi_deploy.launchers.RayLauncher`, configurable.

    dagster-slurm's ``object_store_memory_gb``, ``ray_start_args`` and ``num_gpus_per_node``
    are understood; GPUs themselves are requested with the job's resources (``gpus_per_node``).
    Joining an existing cluster (``ray_address``) is not supported and refused.
    """

    dashboard_host: str = Field(default="127.0.0.1", description="Ray dashboard bind address")
    include_dashboard: bool = Field(default=False, description="Start the Ray dashboard")
    head_port: int | None = Field(default=None, description="GCS port (default: picked)")
    node_ip_address: str | None = Field(default=None, description="Address the head binds to")
    wait_timeout: float = Field(default=120.0, description="Seconds to wait for all nodes")
    worker_ports: int = Field(default=100, description="Worker ports claimed per node")
    object_store_memory: int | None = Field(default=None, description="Object store bytes")
    object_store_memory_gb: int | None = Field(default=None, description="Object store GB")
    client_server: bool = Field(default=False, description="Start the Ray Client server")
    ray_start_args: list[str] = Field(default_factory=list, description="More `ray start` args")
    num_gpus_per_node: int | None = Field(default=None, description="`ray start --num-gpus`")
    ray_address: str | None = Field(default=None, description="Not supported (dagster-slurm)")
    activate_sh: str | None = Field(default=None, description="Unused (dagster-slurm compat)")

    def to_core(self) -> Any:
        from pixi_deploy.launchers import RayLauncher as CoreRay

        if self.ray_address:
            raise ConfigError(
                "RayLauncher(ray_address=...) is not supported by pixi-deploy",
                "let the launcher start Ray in the job's allocation",
            )
        store = self.object_store_memory
        if store is None and self.object_store_memory_gb:
            store = self.object_store_memory_gb * 1024**3
        extra = list(self.ray_start_args)
        if self.num_gpus_per_node is not None:
            extra.append(f"--num-gpus={self.num_gpus_per_node}")
        return CoreRay(
            dashboard_host=self.dashboard_host,
            include_dashboard=self.include_dashboard,
            head_port=self.head_port,
            node_ip_address=self.node_ip_address,
            wait_timeout=self.wait_timeout,
            worker_ports=self.worker_ports,
            object_store_memory=store,
            client_server=self.client_server,
            extra_start_args=tuple(extra),
        )
