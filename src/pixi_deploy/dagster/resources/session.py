"""SessionResource (dagster-slurm's SlurmSessionResource) and the run-owned allocation settings.

A session is one allocation for a whole Dagster run; every asset runs as an ``srun`` step in
it, so only the first waits in the queue. It is requested when the first step needs it and
shared by all of the run's step processes (:mod:`pixi_deploy.dagster.allocation`), then
released when the last one is done: ``release_grace`` seconds later if it was a step process of
Dagster's multiprocess executor (so the run's next step can attach), at once otherwise and
after an interrupt.
``SlurmRunAllocationConfig`` sizes the same kind of allocation for
``ComputeResource(mode="slurm", allocation_scope=SlurmAllocationScope.RUN)``.
"""

from __future__ import annotations

import threading
from enum import StrEnum
from typing import Any, Literal

import dagster as dg
from pydantic import Field, PrivateAttr, model_validator

from pixi_deploy.dagster.allocation import SharedAllocation, teardown_grace
from pixi_deploy.dagster.strict import StrictConfig, StrictResource
from pixi_deploy.errors import ConfigError
from pixi_deploy.slurm import JobResources, SlurmSession

from .slurm import SlurmResource


class SlurmAllocationScope(StrEnum):
    """How ``mode="slurm"`` allocates: one job per asset, or one allocation per Dagster run."""

    ASSET = "asset"
    RUN = "run"


def allocation_resources(slurm: SlurmResource, overrides: dict[str, Any]) -> JobResources:
    """The queue defaults with the allocation's own sizes on top (None/empty: inherit)."""
    return slurm.queue.job_resources({k: v for k, v in overrides.items() if v not in (None, "")})


class SlurmRunAllocationConfig(StrictConfig):
    """Size of a run-owned allocation (unset fields inherit the SlurmQueueConfig)."""

    num_nodes: int | None = Field(default=None, ge=1, description="Nodes")
    gpus_per_node: int | None = Field(default=None, ge=0, description="GPUs per node")
    cpus_per_task: int | None = Field(default=None, ge=1, description="CPUs per task")
    mem: str | None = Field(default=None, description="Memory per node, e.g. '32G'")
    mem_per_cpu: str | None = Field(default=None, description="Memory per CPU")
    time_limit: str | None = Field(default=None, description="Allocation time limit")
    partition: str | None = Field(default=None, description="Partition")
    qos: str | None = Field(default=None, description="QoS")
    account: str | None = Field(default=None, description="Account")
    reservation: str | None = Field(default=None, description="Reservation")
    constraint: str | None = Field(default=None, description="Constraint")
    cleanup_policy: Literal["after_run"] = Field(
        default="after_run", description="Released after the run (the only policy)"
    )
    release_grace: float = Field(
        default=60.0, ge=0, description="Seconds the allocation waits for the next step process"
    )

    def overrides(self) -> dict[str, Any]:
        return {
            "nodes": self.num_nodes,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": self.cpus_per_task,
            "mem": self.mem,
            "mem_per_cpu": self.mem_per_cpu,
            "time_limit": self.time_limit,
            "partition": self.partition,
            "qos": self.qos,
            "account": self.account,
            "reservation": self.reservation,
            "constraint": self.constraint,
        }


class SessionResource(StrictResource):
    """One Slurm allocation shared by every asset of a Dagster run (each asset an srun step).

    Sizes left unset inherit the SlurmResource's queue defaults (``gpus_per_node=0`` turns the
    queue's GPUs off). ``enable_health_checks`` checks that the allocation still runs before
    each step, so a step never waits on a dead allocation.
    """

    slurm: SlurmResource | None = Field(default=None, description="Default: ComputeResource's")
    num_nodes: int = Field(default=2, description="Nodes in the allocation")
    time_limit: str = Field(default="04:00:00", description="Allocation time limit")
    partition: str | None = Field(default=None, description="Default: the queue's partition")
    max_concurrent_jobs: int = Field(default=10, description="Steps that may run at once")
    enable_health_checks: bool = Field(default=True, description="Check before each step")
    enable_session: bool = Field(default=True, description="False: one job per asset instead")
    enabled: bool = Field(default=True, description="Same as enable_session")
    gpus_per_node: int | None = Field(default=None, ge=0, description="GPUs per node")
    cpus_per_task: int | None = Field(default=None, description="CPUs per task")
    cpus: int | None = Field(default=None, description="Same as cpus_per_task")
    mem: str | None = Field(default=None, description="Memory per node")
    mem_per_cpu: str | None = Field(default=None, description="Memory per CPU")
    qos: str | None = Field(default=None, description="QoS")
    account: str | None = Field(default=None, description="Account")
    reservation: str | None = Field(default=None, description="Reservation")
    constraint: str | None = Field(default=None, description="Constraint")
    release_grace: float = Field(
        default=60.0, ge=0, description="Seconds the allocation waits for the next step process"
    )

    _shared: SharedAllocation | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="after")
    def _check(self) -> SessionResource:
        if self.cpus and self.cpus_per_task and self.cpus != self.cpus_per_task:
            raise ValueError("cpus and cpus_per_task disagree; set one of them")
        if self.max_concurrent_jobs < 1 or self.num_nodes < 1:
            raise ValueError("max_concurrent_jobs and num_nodes must be at least 1")
        return self

    @property
    def active(self) -> bool:
        return self.enabled and self.enable_session

    def overrides(self) -> dict[str, Any]:
        return {
            "nodes": self.num_nodes,
            "time_limit": self.time_limit,
            "partition": self.partition,
            "gpus_per_node": self.gpus_per_node,
            "cpus_per_task": self.cpus_per_task or self.cpus,
            "mem": self.mem,
            "mem_per_cpu": self.mem_per_cpu,
            "qos": self.qos,
            "account": self.account,
            "reservation": self.reservation,
            "constraint": self.constraint,
        }

    def get_session(self, slurm: SlurmResource | None, name: str, run_id: str) -> SlurmSession:
        """The run's running allocation, requested now if no step of the run has one yet."""
        with self._lock:
            if self._shared is None:
                owner = self.slurm or slurm
                if owner is None:
                    raise ConfigError("SessionResource needs a SlurmResource to allocate on")
                self._shared = SharedAllocation(
                    owner.client(),
                    allocation_resources(owner, self.overrides()),
                    run_id=run_id,
                    name=name,
                    max_concurrent_steps=self.max_concurrent_jobs,
                    health_checks=self.enable_health_checks,
                )
            shared = self._shared
        session = shared.acquire()
        if self.enable_health_checks:
            shared.check_alive()
        return session

    def release(self, interrupted: bool = False) -> None:
        """Drop this process's share (idempotent); the last one out cancels the allocation."""
        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None:
            shared.release(grace=0 if interrupted else teardown_grace(self.release_grace))

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.release()
