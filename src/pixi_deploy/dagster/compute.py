"""ComputeResource: the one resource assets use; the mode decides where the payload runs.

Asset code is the same in every mode (dagster-slurm's promise, and its API)::

    @dg.asset
    def features(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path="features.py").get_materialize_result()

- ``local``: the payload runs as a subprocess with the local Python; no SSH, no Slurm.
- ``slurm``: the pixi environment is deployed on demand into the cluster's content-addressed
  store (a no-op round trip once it is there), then each asset run is one Slurm job; with
  ``allocation_scope=SlurmAllocationScope.RUN`` every asset of a Dagster run is instead a step
  of one allocation sized by ``run_allocation``.
- ``slurm-session``: every asset run is an srun step of the allocation SessionResource holds.
- ``slurm-hetjob``: ``run()`` behaves as in ``slurm``; ``run_hetjob()`` runs several payloads
  as the components of one heterogeneous job (:mod:`.hetjob`).

``pre_deployed_env_path`` skips deploying: jobs start at once on that environment.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

import dagster as dg
from dagster._core.pipes.client import PipesClientCompletedInvocation
from pydantic import Field, PrivateAttr, field_validator, model_validator

from pixi_deploy import api
from pixi_deploy.errors import ConfigError
from pixi_deploy.store import DeploymentMetadata

from .allocation import SharedAllocation, teardown_grace
from .config.environment import MODES, ExecutionMode
from .config.runtime import SlurmRunConfig
from .launchers import BashLauncher, ComputeLauncher, SparkLauncher, merge_launcher
from .local import run_local
from .pipes import pipes_context
from .resources import (
    SessionResource,
    SlurmAllocationScope,
    SlurmResource,
    SlurmRunAllocationConfig,
    allocation_resources,
)
from .run_options import RunOptions, resolve
from .strict import StrictResource, refuse

if TYPE_CHECKING:
    from pixi_deploy.project import CodeShipping

__all__ = ["MODES", "ComputeResource", "ExecutionMode"]
REUSE_REASON = (
    "a Ray or Spark cluster is not kept between assets; with mode='slurm-session' the assets "
    "already share one allocation, and each starts its own Ray in it"
)


class ComputeResource(StrictResource):
    """Where asset payloads run: locally, as one Slurm job each, or in a shared allocation."""

    mode: str = Field(default="local", description="local, slurm, slurm-session, slurm-hetjob")
    slurm: SlurmResource | None = Field(default=None, description="The cluster (slurm modes)")
    session: SessionResource | None = Field(default=None, description="slurm-session's allocation")
    default_launcher: ComputeLauncher = Field(
        default_factory=BashLauncher, description="Launcher unless run(launcher=...) says else"
    )
    debug_mode: bool = Field(default=False, description="Keep run folders and submission details")
    cleanup_on_failure: bool = Field(default=True, description="Remove failed runs' folders too")
    auto_detect_platform: bool = Field(default=True, description="Deploy for the edge node's arch")
    pack_platform: str | None = Field(default=None, description="Override, e.g. linux-aarch64")
    pre_deployed_env_path: str | None = Field(default=None, description="Use it; never deploy")
    cache_inject_globs: list[str] | None = Field(
        default=None, description="No effect: the environment's hash covers all its inputs"
    )
    default_skip_payload_upload: bool = Field(
        default=False, description="Run <pre_deployed_env_path>/scripts/<payload name>"
    )
    enable_cluster_reuse: bool = Field(default=False, description="Refused (see README)")
    cluster_reuse_tolerance: float = Field(default=0.2, ge=0, description="With cluster reuse")
    pack_on_remote: bool = Field(default=False, description="Refused: packages move from here")
    remote_pack_timeout: int = Field(default=600, ge=1, description="With pack_on_remote")
    allocation_scope: SlurmAllocationScope = Field(
        default=SlurmAllocationScope.ASSET, description="mode='slurm': per asset, or per run"
    )
    run_allocation: SlurmRunAllocationConfig | None = Field(
        default=None, description="Size of the run's allocation (allocation_scope=RUN)"
    )
    default_environment_name: str | None = Field(default=None, description="pixi environment")
    default_extra_files: list[str] = Field(
        default_factory=list, description="Files uploaded next to every payload"
    )
    project_setup_cmd: list[str] | None = Field(default=None, description="Refused (see README)")
    manifest_path: str | None = Field(default=None, description="pixi.toml or its folder")
    environment: str | None = Field(default=None, description="Same as default_environment_name")
    debug_dir: str | None = Field(default=None, description="Where debug_mode keeps details")
    local_python: str | None = Field(default=None, description="Interpreter for mode 'local'")
    poll_timeout: float | None = Field(default=None, description="Running-time limit, seconds")

    _run_allocation: SharedAllocation | None = PrivateAttr(default=None)
    _lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _warned: set[str] = PrivateAttr(default_factory=set)

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_text(cls, value: Any) -> Any:
        return value.value if isinstance(value, Enum) else value

    @model_validator(mode="after")
    def _check(self) -> ComputeResource:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode != "local" and self.slurm is None:
            raise ValueError(f"mode={self.mode!r} needs slurm=SlurmResource(...)")
        if self.mode == "slurm-session" and self.session is None:
            raise ValueError("mode='slurm-session' needs session=SessionResource(...)")
        if self.enable_cluster_reuse:
            raise refuse("ComputeResource", "enable_cluster_reuse", REUSE_REASON)
        if self.pack_on_remote:
            raise refuse(
                "ComputeResource",
                "pack_on_remote",
                "pixi-deploy fetches the packages here and streams the environment to the "
                "cluster; use pre_deployed_env_path for a cluster-side deployment",
            )
        if self.project_setup_cmd:
            raise refuse(
                "ComputeResource",
                "project_setup_cmd",
                "there is no setup step; put what the payload needs in the pixi environment",
            )
        if self.allocation_scope == SlurmAllocationScope.RUN and self.mode != "slurm":
            raise ValueError("allocation_scope='run' needs mode='slurm'")
        if self.run_allocation is not None and self.allocation_scope != SlurmAllocationScope.RUN:
            raise ValueError("run_allocation is only used with allocation_scope='run'")
        name, other = self.default_environment_name, self.environment
        if name and other and name != other:
            raise ValueError("default_environment_name and environment disagree; set one")
        return self

    # -- running ------------------------------------------------------------------------------
    def run(
        self,
        context: Any,
        payload_path: str | None = None,
        launcher: ComputeLauncher | None = None,
        extra_slurm_opts: Mapping[str, Any] | None = None,
        resource_requirements: Mapping[str, Any] | None = None,
        force_env_push: bool | None = None,
        skip_payload_upload: bool | None = None,
        remote_payload_path: str | None = None,
        config: SlurmRunConfig | None = None,
        *,
        environment_name: str | None = None,
        metrics_collector: Any = None,
        slurm_metrics: Any = None,
        task: str | None = None,
        task_args: Sequence[str] = (),
        **kwargs: Any,
    ) -> PipesClientCompletedInvocation:
        """Run the payload script (or ``task``, a task of the manifest, with ``task_args``)
        with Dagster Pipes and return its results.

        Use ``.get_materialize_result()`` for one asset, ``.get_results()`` for multi-assets,
        ``.get_asset_check_result()`` in an asset check. ``extras=`` reach the payload as
        ``context.extras``, ``extra_env=`` as environment variables, ``extra_files=`` are
        uploaded next to it. ``extra_slurm_opts`` / ``resource_requirements`` override the
        queue defaults for this run (``nodes``, ``cpus_per_task``/``cpus``, ``mem``/
        ``memory_gb``, ``gpus_per_node``, ``time_limit``, ``partition``, ...).
        ``config=SlurmRunConfig(...)`` (an asset's launchpad config) and asset metadata
        decide payload upload as in dagster-slurm. A failed payload fails the asset with the
        payload's own traceback.

        The payload and ``extra_files`` travel in the run's code snapshot with the
        workspace's files (a re-run with no change sends nothing). ``task=`` runs as
        ``pixi-deploy submit --task`` does (depends-on, args, env, cwd; in the code snapshot,
        in the deployed environment); in mode ``local`` it runs in the workspace with the
        environment this process has, as payloads do. Its process gets the Pipes variables,
        so a task whose command uses ``dagster_pipes`` reports to Dagster.
        """
        context = pipes_context(context)
        self._warn_once(context)
        _check_payload_or_task(payload_path, task, skip_payload_upload, remote_payload_path)
        options = resolve(
            context,
            payload_path or "",
            explicit={
                "force_env_push": force_env_push,
                "skip_payload_upload": skip_payload_upload,
                "remote_payload_path": remote_payload_path,
                "environment_name": environment_name,
                "metrics_collector": metrics_collector,
                "slurm_metrics": slurm_metrics,
            },
            config=config,
            defaults={
                "pre_deployed_env_path": self.pre_deployed_env_path,
                "default_skip_payload_upload": self.default_skip_payload_upload,
                "default_extra_files": self.default_extra_files,
                "environment": self.default_environment_name or self.environment,
            },
            kwargs=kwargs,
        )
        chosen = merge_launcher(self.default_launcher, launcher)
        if isinstance(chosen, SparkLauncher):
            chosen.to_core()  # raises: not built
        timeout = kwargs.get("poll_timeout")
        timeout = timeout if timeout is not None else self.poll_timeout
        if task is not None:
            options.remote_payload = None  # a task runs from the code snapshot
        if self.mode == "local":
            command: list[str] | None = None
            cwd: str | None = None
            env: dict[str, str] = {}
            if task is not None:
                command, where, env = api.task_command(
                    task,
                    task_args,
                    manifest_path=self.manifest_path,
                    environment=options.environment,
                    platform=self._platform(),
                )
                cwd = str(where)
            return run_local(
                context,
                payload_path,
                python=self.local_python or sys.executable,
                extra_env={**env, **(kwargs.get("extra_env") or {})},
                extras=kwargs.get("extras"),
                cwd=cwd,
                timeout=timeout,
                command=command,
            )
        overrides = {**(resource_requirements or {}), **(extra_slurm_opts or {})}
        code = self.prepare_code(context, options, payload_path, task, task_args)
        return self._run_remote(
            context, payload_path, chosen, overrides, options, kwargs, timeout, code, task_args
        )

    def _run_remote(
        self,
        context: Any,
        payload_path: str | None,
        chosen: ComputeLauncher,
        overrides: dict[str, Any],
        options: RunOptions,
        kwargs: Mapping[str, Any],
        timeout: float | None,
        code: CodeShipping,
        task_args: Sequence[str],
    ) -> PipesClientCompletedInvocation:
        from .remote import RemoteRun, StepAllocation, run_id, run_remote

        slurm = self._slurm()
        allocation: StepAllocation | None = None
        resources = slurm.queue.job_resources(overrides)
        session = self.session if self.mode == "slurm-session" else None
        if session is not None and (not session.active or options.use_session is False):
            context.log.info("[pixi-deploy] the session is not used: one Slurm job per asset")
            session = None
        if session is not None:
            name, rid = f"dagster-{run_id(context)[:8]}", run_id(context)
            allocation = StepAllocation(
                get=lambda: session.get_session(slurm, name, rid),
                release=lambda: session.release(interrupted=True),
            )
            resources = _step_resources(overrides)
        elif self.allocation_scope == SlurmAllocationScope.RUN and self.mode == "slurm":
            if overrides:
                raise ConfigError(
                    "allocation_scope='run' gives the run one allocation shape; this asset asks "
                    f"for its own ({', '.join(sorted(overrides))})",
                    "size the allocation with run_allocation=SlurmRunAllocationConfig(...)",
                )
            shared = self._shared_run_allocation(context)
            allocation = StepAllocation(
                get=shared.acquire,
                release=lambda: shared.release(grace=0),
                label="run allocation",
                mode="slurm-run-allocation",
            )
            from pixi_deploy.slurm import JobResources

            resources = JobResources(nodes=shared.resources.nodes)  # the step gets all nodes
        environment, facts = self._environment(context, slurm, options, code)
        return run_remote(
            context,
            payload_path,
            RemoteRun(
                slurm=slurm,
                environment=environment,
                launcher=chosen.to_core(),
                resources=resources,
                allocation=allocation,
                remote_payload=options.remote_payload,
                extra_env=dict(kwargs.get("extra_env") or {}),
                extras=dict(kwargs.get("extras") or {}),
                code=code,
                command=code.command(task_args, environment) if code.task else None,
                timeout=timeout,
                debug_mode=self.debug_mode,
                debug_dir=self.debug_dir,
                cleanup_on_failure=self.cleanup_on_failure,
                metadata={**facts, "pixi_deploy_launcher": chosen.describe()},
            ),
        )

    def run_session(self, context: Any, payload_path: str, **kwargs: Any) -> Any:
        """``run`` that insists on the shared allocation (mode ``slurm-session``)."""
        if self.mode != "slurm-session":
            raise ConfigError(
                f"run_session needs mode='slurm-session' (this resource is {self.mode!r})"
            )
        return self.run(context, payload_path, **kwargs)

    def run_hetjob(
        self,
        context: Any,
        assets: Sequence[tuple[str, str, Mapping[str, Any]]],
        launchers: Mapping[str, ComputeLauncher] | None = None,
        **kwargs: Any,
    ) -> dict[str, PipesClientCompletedInvocation]:
        """Run several payloads as the components of one heterogeneous Slurm job (mode
        ``slurm-hetjob``): ``assets`` are ``(name, payload_path, requirements)``, each
        payload gets its own sizes and its own Pipes session; returns each one's results by
        name (``yield from results[name].get_results()``). See :mod:`.hetjob`."""
        from .hetjob import run_hetjob

        if self.mode != "slurm-hetjob":
            raise ConfigError(f"run_hetjob needs mode='slurm-hetjob' (this is {self.mode!r})")
        return run_hetjob(self, pipes_context(context), assets, launchers or {}, kwargs)

    def deploy(self, context: Any) -> str:
        """Deploy (or find) the environment now and return its path on the cluster, e.g. in
        a first asset so that later ones start at once."""
        return self._environment(context, self._slurm(), RunOptions())[0].deployment_path

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Dagster also tears the nested SessionResource down; releasing twice is harmless and
        # makes sure the allocation goes even if only this resource is torn down.
        if self.session is not None:
            self.session.release()
        with self._lock:
            shared, self._run_allocation = self._run_allocation, None
        if shared is not None:
            grace = self.run_allocation.release_grace if self.run_allocation else 60.0
            shared.release(grace=teardown_grace(grace))

    # -- helpers --------------------------------------------------------------------------
    def prepare_code(
        self,
        context: Any,
        options: RunOptions,
        payload_path: str | None,
        task: str | None = None,
        task_args: Sequence[str] = (),
    ) -> CodeShipping:
        """The run's code snapshot (workspace, payload, extra files) and task, checked."""
        from .remote import log_reporter

        payload = payload_path if options.remote_payload is None and task is None else None
        return api.prepare_code(
            manifest_path=self.manifest_path,
            pre_deployed=bool(options.pre_deployed_env_path or self.pre_deployed_env_path),
            payload=payload,
            extra_files=options.extra_files,
            task=task,
            task_args=task_args,
            environment=self._environment_name(options),
            platform=self._platform(),
            reporter=log_reporter(context),
        )

    def environment_facts(
        self, context: Any, options: RunOptions, code: CodeShipping | None = None
    ) -> tuple[DeploymentMetadata, dict[str, Any]]:
        return self._environment(context, self._slurm(), options, code)

    def _environment(
        self,
        context: Any,
        slurm: SlurmResource,
        options: RunOptions,
        code: CodeShipping | None = None,
    ) -> tuple[DeploymentMetadata, dict[str, Any]]:
        from .remote import ensure_environment

        return ensure_environment(
            context,
            slurm,
            pre_deployed_env_path=options.pre_deployed_env_path or self.pre_deployed_env_path,
            manifest_path=self.manifest_path,
            environment=(code.environment if code else None) or self._environment_name(options),
            platform=self._platform(),
            need_metadata=code is not None and code.task is not None,
        )

    def _environment_name(self, options: RunOptions) -> str | None:
        return options.environment or self.default_environment_name or self.environment

    def _shared_run_allocation(self, context: Any) -> SharedAllocation:
        from .remote import run_id

        slurm = self._slurm()
        with self._lock:
            if self._run_allocation is None:
                sizes = self.run_allocation.overrides() if self.run_allocation else {}
                self._run_allocation = SharedAllocation(
                    slurm.client(),
                    allocation_resources(slurm, sizes),
                    run_id=run_id(context),
                    name=f"dagster-{run_id(context)[:8]}",
                    max_concurrent_steps=self.session.max_concurrent_jobs if self.session else 10,
                )
            return self._run_allocation

    def _warn_once(self, context: Any) -> None:
        if self.cache_inject_globs and "cache_inject_globs" not in self._warned:
            self._warned.add("cache_inject_globs")
            context.log.warning(
                "[pixi-deploy] cache_inject_globs has no effect: an environment is named by the "
                "hash of everything that goes into it, so any change deploys a new one"
            )

    def _slurm(self) -> SlurmResource:
        if self.slurm is None:
            raise ConfigError(f"mode={self.mode!r} needs slurm=SlurmResource(...)")
        return self.slurm

    def _platform(self) -> str | None:
        if self.pack_platform:
            return self.pack_platform
        return None if self.auto_detect_platform else "linux-64"


def _check_payload_or_task(
    payload_path: str | None,
    task: str | None,
    skip_payload_upload: bool | None,
    remote_payload_path: str | None,
) -> None:
    if (payload_path is None) == (task is None):
        raise ConfigError(
            "ComputeResource.run() needs a payload_path or a task, not "
            + ("both" if task else "neither"),
            "pass payload_path=... (a Python script) or task=... (a task of the manifest)",
        )
    if task is not None and (skip_payload_upload or remote_payload_path):
        raise ConfigError(
            f"task={task!r} runs from the code snapshot; skip_payload_upload and "
            "remote_payload_path do not apply",
            "drop them, or run a payload already on the cluster with payload_path=...",
        )


def _step_resources(overrides: Mapping[str, Any]) -> Any:
    """A session step asks only for what the asset says; the allocation's size is the
    SessionResource's. Unknown keys fail the same way as for jobs."""
    from pixi_deploy.slurm import JobResources

    from .resources import SlurmQueueConfig

    if not overrides:
        return JobResources()
    blank = SlurmQueueConfig(time_limit="", cpus=0, num_nodes=0, mem=None)
    return blank.job_resources(dict(overrides))
