"""ComputeResource: the one resource assets use; the mode decides where the payload runs.

Asset code is the same in every mode (dagster-slurm's promise, and its API)::

    @dg.asset
    def features(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path="features.py").get_materialize_result()

- ``local``: the payload runs as a subprocess with the local Python; no SSH, no Slurm.
- ``slurm``: the pixi environment is deployed on demand into the cluster's content-addressed
  store (a no-op round trip once it is there), then each asset run is one Slurm job.
- ``slurm-session``: like ``slurm``, but every asset run is an srun step of one allocation that
  SessionResource holds for the Dagster run and releases at teardown.

``pre_deployed_env_path`` skips deploying: jobs start at once on that environment.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from enum import Enum, StrEnum
from typing import Any

import dagster as dg
from dagster._core.pipes.client import PipesClientCompletedInvocation
from pydantic import Field, field_validator, model_validator

from pixi_deploy.errors import ConfigError

from .launchers import BashLauncher, ComputeLauncher
from .local import run_local
from .resources import SessionResource, SlurmResource

MODES = ("local", "slurm", "slurm-session")


class ExecutionMode(StrEnum):
    """The modes by name, for code that prefers constants to strings (as dagster-slurm's)."""

    LOCAL = "local"
    SLURM = "slurm"
    SLURM_SESSION = "slurm-session"


class ComputeResource(dg.ConfigurableResource):
    """Where asset payloads run: locally, as one Slurm job each, or in a shared allocation."""

    mode: str = Field(default="local", description="'local', 'slurm' or 'slurm-session'")
    slurm: SlurmResource | None = Field(default=None, description="The cluster (slurm modes)")
    session: SessionResource | None = Field(default=None, description="slurm-session's allocation")
    default_launcher: ComputeLauncher = Field(
        default_factory=BashLauncher, description="Launcher unless run(launcher=...) says else"
    )
    manifest_path: str | None = Field(
        default=None, description="pixi.toml/pyproject.toml or its folder (default: cwd)"
    )
    environment: str | None = Field(default=None, description="pixi environment (default)")
    auto_detect_platform: bool = Field(
        default=True, description="Deploy for the edge node's platform (uname)"
    )
    pack_platform: str | None = Field(default=None, description="Override, e.g. linux-aarch64")
    pre_deployed_env_path: str | None = Field(
        default=None, description="Use this deployed environment; never pack or upload"
    )
    debug_mode: bool = Field(
        default=False, description="Keep the cluster run folder and local submission details"
    )
    debug_dir: str | None = Field(
        default=None, description="Where debug_mode keeps submission details (default: tmp)"
    )
    cleanup_on_failure: bool = Field(
        default=True, description="Remove the cluster run folder of failed runs too"
    )
    local_python: str | None = Field(
        default=None, description="Interpreter for mode 'local' (default: this one)"
    )
    poll_timeout: float | None = Field(
        default=None, description="Running-time limit per payload in seconds (None: none)"
    )

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
        return self

    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        payload_path: str,
        launcher: ComputeLauncher | None = None,
        extra_env: Mapping[str, str] | None = None,
        extras: Mapping[str, Any] | None = None,
        resource_requirements: Mapping[str, Any] | None = None,
        extra_slurm_opts: Mapping[str, Any] | None = None,
        extra_files: Sequence[str] | None = None,
        poll_timeout: float | None = None,
    ) -> PipesClientCompletedInvocation:
        """Run the payload script with Dagster Pipes and return its results.

        Use ``.get_materialize_result()`` for one asset, ``.get_results()`` for multi-assets
        and asset checks. ``extras`` reach the payload as ``context.extras``; ``extra_env`` as
        environment variables. ``resource_requirements`` / ``extra_slurm_opts`` override the
        queue defaults for this run (``nodes``, ``cpus_per_task``/``cpus``, ``mem``/
        ``memory_gb``, ``gpus_per_node``/``gpus``, ``time_limit``, ``partition``, ...). A failed
        payload fails the asset with the payload's own traceback.
        """
        timeout = poll_timeout if poll_timeout is not None else self.poll_timeout
        if self.mode == "local":
            return run_local(
                context,
                payload_path,
                python=self.local_python or sys.executable,
                extra_env=extra_env,
                extras=extras,
                timeout=timeout,
            )
        from .remote import RemoteRun, ensure_environment, run_remote

        slurm = self._slurm()
        session = self.session if self.mode == "slurm-session" else None
        if session is not None and not session.active:
            context.log.info("[pixi-deploy] the session is disabled: one Slurm job per asset")
            session = None
        overrides = {**(resource_requirements or {}), **(extra_slurm_opts or {})}
        resources = slurm.queue.job_resources(overrides)
        if session is not None:
            resources = _step_resources(overrides)
        env_path, facts = ensure_environment(
            context,
            slurm,
            pre_deployed_env_path=self.pre_deployed_env_path,
            manifest_path=self.manifest_path,
            environment=self.environment,
            platform=self._platform(),
        )
        chosen = launcher or self.default_launcher
        return run_remote(
            context,
            payload_path,
            RemoteRun(
                slurm=slurm,
                environment_path=env_path,
                launcher=chosen.to_core(),
                resources=resources,
                session=session,
                extra_env=dict(extra_env or {}),
                extras=dict(extras or {}),
                extra_files=list(extra_files or []),
                timeout=timeout,
                debug_mode=self.debug_mode,
                debug_dir=self.debug_dir,
                cleanup_on_failure=self.cleanup_on_failure,
                metadata={**facts, "pixi_deploy_launcher": chosen.describe()},
            ),
        )

    def run_session(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        payload_path: str,
        **kwargs: Any,
    ) -> PipesClientCompletedInvocation:
        """``run`` that insists on the shared allocation (mode ``slurm-session``)."""
        if self.mode != "slurm-session":
            raise ConfigError(
                f"run_session needs mode='slurm-session' (this resource is {self.mode!r})"
            )
        return self.run(context, payload_path, **kwargs)

    def deploy(self, context: dg.AssetExecutionContext | dg.OpExecutionContext) -> str:
        """Deploy (or find) the environment now and return its path on the cluster, e.g. in
        a first asset so that later ones start at once."""
        from .remote import ensure_environment

        path, _ = ensure_environment(
            context,
            self._slurm(),
            pre_deployed_env_path=self.pre_deployed_env_path,
            manifest_path=self.manifest_path,
            environment=self.environment,
            platform=self._platform(),
        )
        return path

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        # Dagster also tears the nested SessionResource down; releasing twice is harmless and
        # makes sure the allocation goes even if only this resource is torn down.
        if self.session is not None:
            self.session.release()

    # -- helpers --------------------------------------------------------------------------
    def _slurm(self) -> SlurmResource:
        if self.slurm is None:
            raise ConfigError(f"mode={self.mode!r} needs slurm=SlurmResource(...)")
        return self.slurm

    def _platform(self) -> str | None:
        if self.pack_platform:
            return self.pack_platform
        return None if self.auto_detect_platform else "linux-64"


def _step_resources(overrides: Mapping[str, Any]) -> Any:
    """A session step asks only for what the asset says; the allocation's size is the
    SessionResource's. Unknown keys fail the same way as for jobs."""
    from pixi_deploy.slurm import JobResources

    from .resources import SlurmQueueConfig

    if not overrides:
        return JobResources()
    blank = SlurmQueueConfig(time_limit="", cpus=0, num_nodes=0)
    return blank.job_resources(dict(overrides))
