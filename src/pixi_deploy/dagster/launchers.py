"""Launchers as Dagster-configurable resources, turned into the core launchers at submit time.

The core launchers (:mod:`pixi_deploy.launchers`) are plain classes that render bash; Dagster
needs Pydantic models it can show in the UI and nest in ``ComputeResource``. These wrappers are
that configuration with dagster-slurm's field names: ``to_core()`` builds the real launcher, so
the bash a job runs is the same whether it was submitted from Dagster or from the CLI. Fields
whose feature is not built are refused at construction; ``SparkLauncher`` is accepted with its
settings but fails when a run would use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from pixi_deploy.errors import ConfigError

from .strict import StrictResource, refuse


class ComputeLauncher(StrictResource):
    """Base class: how the payload is started inside the allocation (after activation)."""

    def to_core(self) -> Any:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class PreStart:
    """A core launcher with the user's shell lines (``ulimit -n 65536``...) run before it."""

    inner: Any
    commands: tuple[str, ...]

    def render(self, spec: Any) -> str:
        return "\n".join(self.commands) + "\n" + str(self.inner.render(spec))


class BashLauncher(ComputeLauncher):
    """Run the payload as a plain command in the job's shell (the default).

    ``activate_sh`` is accepted for dagster-slurm compatibility and not needed: the job script
    activates the deployed environment itself.
    """

    activate_sh: str | None = Field(default=None, description="Not needed (see the docstring)")

    def to_core(self) -> Any:
        from pixi_deploy.launchers import BashLauncher as CoreBash

        return CoreBash()


class RayLauncher(ComputeLauncher):
    """Start Ray across the allocation's nodes, run the payload as the driver (``RAY_ADDRESS``
    set), tear Ray down: the core :class:`pixi_deploy.launchers.RayLauncher`, configurable.

    Ports: with ``port_strategy='hash_jobid'`` (the default) every port is picked free on the
    node at run time (so two Ray jobs on a node never collide; ``ray_port``/``dashboard_port``
    are not used); with ``'fixed'`` the GCS listens on ``ray_port`` and the dashboard, when
    ``include_dashboard``, on ``dashboard_port``. The dashboard is off and binds to 127.0.0.1
    unless asked otherwise. ``head_startup_timeout`` is how long the cluster may take to come up.
    """

    num_gpus_per_node: int | None = Field(default=None, description="`ray start --num-gpus`")
    ray_address: str | None = Field(default=None, description="Refused: Ray runs in the job")
    dashboard_port: int = Field(default=8265, ge=1, le=65535, description="With 'fixed' ports")
    object_store_memory_gb: int | None = Field(default=None, description="Object store, GB")
    object_store_memory: int | None = Field(default=None, description="Object store, bytes")
    ray_start_args: list[str] = Field(default_factory=list, description="More `ray start` args")
    redis_password: str | None = Field(default=None, description="Refused (Ray >= 2 has none)")
    ray_port: int = Field(default=6379, ge=1, le=65535, description="GCS port with 'fixed'")
    grace_period: int = Field(default=5, description="Seconds Ray gets to stop (fixed at 5)")
    head_startup_timeout: int = Field(default=120, ge=1, description="Seconds to come up")
    worker_startup_delay: int = Field(default=1, description="Workers start together (1 only)")
    pre_start_commands: list[str] = Field(
        default_factory=list, description="Shell lines run before `ray start` (e.g. ulimit)"
    )
    worker_cpu_bind: str | None = Field(default=None, description="Only None/'none'")
    use_head_ip: bool = Field(default=True, description="The head binds to the node's IP")
    dashboard_host: str = Field(default="127.0.0.1", description="Ray dashboard bind address")
    port_strategy: Literal["fixed", "hash_jobid"] = Field(
        default="hash_jobid", description="'hash_jobid': pick free ports; 'fixed': ray_port"
    )
    include_dashboard: bool = Field(default=False, description="Start the Ray dashboard")
    head_port: int | None = Field(default=None, description="GCS port (same as fixed ray_port)")
    node_ip_address: str | None = Field(default=None, description="Address the head binds to")
    wait_timeout: float | None = Field(default=None, description="Same as head_startup_timeout")
    worker_ports: int = Field(default=100, description="Worker ports claimed per node")
    client_server: bool = Field(default=False, description="Start the Ray Client server")
    activate_sh: str | None = Field(default=None, description="Not needed (the job activates)")

    @model_validator(mode="after")
    def _check(self) -> RayLauncher:
        def no(name: str, reason: str) -> None:
            raise refuse("RayLauncher", name, reason)

        if self.ray_address:
            no("ray_address", "Ray is started in the job's allocation; let the launcher start it")
        if self.redis_password:
            no("redis_password", "Ray 2 has no Redis; its GCS is reachable from the job only")
        if self.grace_period != 5:
            no("grace_period", "Ray's processes get 5 s to stop before they are killed")
        if self.worker_startup_delay != 1:
            no("worker_startup_delay", "the workers start together with one srun")
        if self.worker_cpu_bind not in (None, "none"):
            no("worker_cpu_bind", "the workers' srun does not bind CPUs")
        if not self.use_head_ip:
            no("use_head_ip", "the head binds to the node's address so workers can reach it")
        if self.object_store_memory and self.object_store_memory_gb:
            raise ValueError("set object_store_memory or object_store_memory_gb, not both")
        if (
            self.wait_timeout is not None
            and "head_startup_timeout" in self.model_fields_set
            and self.wait_timeout != self.head_startup_timeout
        ):
            raise ValueError("wait_timeout and head_startup_timeout disagree; set one")
        return self

    def to_core(self) -> Any:
        from pixi_deploy.launchers import RayLauncher as CoreRay

        store = self.object_store_memory
        if store is None and self.object_store_memory_gb:
            store = self.object_store_memory_gb * 10**9  # dagster-slurm's GB
        extra = list(self.ray_start_args)
        if self.num_gpus_per_node is not None:
            extra.append(f"--num-gpus={self.num_gpus_per_node}")
        head_port = self.head_port
        if self.port_strategy == "fixed":
            head_port = head_port or self.ray_port
            if self.include_dashboard:
                extra.append(f"--dashboard-port={self.dashboard_port}")  # the last one wins
        core = CoreRay(
            dashboard_host=self.dashboard_host,
            include_dashboard=self.include_dashboard,
            head_port=head_port,
            node_ip_address=self.node_ip_address,
            wait_timeout=float(
                self.wait_timeout if self.wait_timeout is not None else self.head_startup_timeout
            ),
            worker_ports=self.worker_ports,
            object_store_memory=store,
            client_server=self.client_server,
            extra_start_args=tuple(extra),
        )
        if self.pre_start_commands:
            return PreStart(core, tuple(self.pre_start_commands))
        return core


class SparkLauncher(ComputeLauncher):
    """dagster-slurm's (experimental) Spark launcher: its settings are accepted so that
    definitions load, but pixi-deploy has no Spark launcher yet; a run that would use it fails
    with a clear error (there is no Spark here to build and test one against)."""

    spark_home: str = Field(default="/opt/spark", description="Spark installation")
    master_url: str | None = Field(default=None, description="Existing Spark master")
    executor_memory: str = Field(default="4g", description="Memory per executor")
    executor_cores: int = Field(default=2, description="Cores per executor")
    driver_memory: str = Field(default="2g", description="Driver memory")
    num_executors: int | None = Field(default=None, description="Executors")
    activate_sh: str | None = Field(default=None, description="Not needed (the job activates)")

    def to_core(self) -> Any:
        raise ConfigError(
            "SparkLauncher is not supported by pixi-deploy yet: the payload would not run "
            "under spark-submit",
            "use BashLauncher (start Spark from the payload) or RayLauncher",
        )


def merge_launcher(default: ComputeLauncher, override: ComputeLauncher | None) -> ComputeLauncher:
    """dagster-slurm's rule: an override of the default's own class only changes the fields
    it sets, so site defaults (ports, pre-start commands) persist; another class replaces it."""
    if override is None:
        return default
    if type(override) is type(default):
        return default.model_copy(update=override.model_dump(exclude_unset=True))
    return override
