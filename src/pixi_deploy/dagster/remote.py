"""Modes ``slurm`` and ``slurm-session``: make sure the environment is on the cluster, then run
the payload in it as a Slurm job (or as a step of the shared allocation) inside a Pipes session.

The payload and its extra files travel in the run's code snapshot, with the workspace's
files (:func:`pixi_deploy.api.prepare_code`): content-addressed, so a re-run with nothing
changed sends nothing, and an edit sends about the edited file. The job starts in its own
working copy of the snapshot, in the payload's folder, so extra files sit next to the
payload as in dagster-slurm. Every asset run also gets a folder
``<base>/dagster/<dagster run id>/<step>-<random>/`` for the Pipes context and message file;
it is removed afterwards unless ``debug_mode`` (or a failure with
``cleanup_on_failure=False``) asks to keep it.

Cancellation: Dagster stops a run by raising DagsterExecutionInterruptedError (or
KeyboardInterrupt) in the op. Whatever the exception, a submitted job is scancel'ed before it
propagates; in session mode the step's srun is killed with its channel and the allocation is
released, so an interrupted run never leaves work running on the cluster.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dagster import AssetExecutionContext, OpExecutionContext
from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.pipes.client import PipesClientCompletedInvocation
from dagster._core.pipes.utils import open_pipes_session

from pixi_deploy import api
from pixi_deploy.errors import ConfigError
from pixi_deploy.slurm import JobResources, JobResult, JobSpec, SlurmSession
from pixi_deploy.store import DeploymentMetadata

from .pipes import (
    ExceptionCapturingReader,
    OutputForwarder,
    RemoteFileContextInjector,
    RemoteFileMessageReader,
    failure_text,
)
from .resources import SlurmResource

if TYPE_CHECKING:
    from pixi_deploy.project import CodeShipping

Context = AssetExecutionContext | OpExecutionContext
# the run's folder, then its parent if this was the run's last asset
_REMOVE = 'rm -rf -- "$1" && rmdir -- "${1%/*}" 2>/dev/null; exit 0'
_CHECK_ENV = '[ -f "$1/activate.sh" ] && [ -f "$1/deployment_metadata.json" ]'


@dataclass
class StepAllocation:
    """Run as an srun step of an allocation: ``get()`` gives the running session (requested on
    first use), ``release()`` lets it go after an interrupt; ``het_group`` picks the component
    of a heterogeneous job. ``label`` names it in log lines."""

    get: Callable[[], SlurmSession]
    release: Callable[[], None]
    label: str = "session allocation"
    mode: str = "slurm-session"
    het_group: int | None = None


@dataclass
class RemoteRun:
    """Everything one asset run on the cluster needs, resolved by ComputeResource.

    ``remote_payload`` set means "do not upload: run this file already on the cluster".
    ``code`` is the run's code snapshot (the workspace, the payload, the extra files), sent
    before the job starts (nothing moves when the cluster has it); ``command`` (a task's)
    replaces ``python payload``."""

    slurm: SlurmResource
    environment: DeploymentMetadata
    launcher: Any
    resources: JobResources
    allocation: StepAllocation | None = None
    remote_payload: str | None = None
    extra_env: Mapping[str, str] = field(default_factory=dict)
    extras: Mapping[str, Any] = field(default_factory=dict)
    code: CodeShipping | None = None
    command: Sequence[str] | None = None
    timeout: float | None = None
    debug_mode: bool = False
    debug_dir: str | None = None
    cleanup_on_failure: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)
    implicit_materializations: bool = True  # False: results only for what the payload reported


class ReportedResults(PipesClientCompletedInvocation):
    """Results of a payload that shares its Dagster step with others (a heterogeneous job's
    component): by default only what it reported, so that the step's other assets are not
    materialized implicitly by every component."""

    def get_results(self, *, implicit_materializations: bool = False) -> Any:
        return super().get_results(implicit_materializations=implicit_materializations)


def ensure_environment(
    context: Context,
    slurm: SlurmResource,
    *,
    pre_deployed_env_path: str | None,
    manifest_path: str | None,
    environment: str | None,
    platform: str | None,
    need_metadata: bool = False,
) -> tuple[DeploymentMetadata, dict[str, Any]]:
    """The environment on the cluster, deployed now if needed, and facts for metadata.

    A pre-deployed path is only checked (one round trip), never packed: a path that does not
    exist or was pruned fails here, before anything is submitted. Its metadata is read only
    when ``need_metadata`` (a task is planned for its platform).
    """
    transport = slurm.transport()
    if pre_deployed_env_path:
        path = transport.expand_path(pre_deployed_env_path).rstrip("/")
        if transport.run_script(_CHECK_ENV, [path], check=False).exit_status != 0:
            raise ConfigError(
                f"pre_deployed_env_path {path} is not a deployed environment on the cluster "
                "(it does not exist, was pruned, or lacks activate.sh)",
                "deploy it again with `pixi-deploy deploy --target ssh`, or unset "
                "pre_deployed_env_path to deploy on demand",
            )
        found = (
            api.metadata_on_cluster(path, transport)
            if need_metadata
            else DeploymentMetadata.at(path)
        )
        return found, {"pixi_deploy_environment": path, "pixi_deploy_deployed": "pre-deployed"}
    metadata = api.deploy(
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        target="ssh",
        base=slurm.base_path(),
        reporter=log_reporter(context),
        transport=transport,
    )
    verb = "reused" if metadata.reused else "deployed"
    context.log.info(
        f"[pixi-deploy] {verb} environment {metadata.environment} ({metadata.platform}) "
        f"at {metadata.deployment_path}"
    )
    return metadata, {
        "pixi_deploy_environment": metadata.deployment_path,
        "pixi_deploy_deployed": verb,
        "pixi_deploy_platform": metadata.platform,
        "pixi_deploy_lock_hash": metadata.lock_hash,
    }


def run_remote(
    context: Context, payload_path: str | None, run: RemoteRun
) -> PipesClientCompletedInvocation:
    """Send the run's code snapshot (payload and extra files in it), run the payload (or the
    task) on the cluster in a Pipes session, return its results."""
    transport = run.slurm.transport()
    folder = f"{run.slurm.base_path()}/dagster/{_run_id(context)}/{_step_name(context)}"
    if run.remote_payload:
        if not transport.exists(run.remote_payload):
            raise DagsterPipesExecutionError(
                f"the payload {run.remote_payload} is not on the cluster (skip_payload_upload is "
                "set, so it was not uploaded); deploy it there or upload it"
            )
        command = [run.slurm.remote_python, "-u", run.remote_payload]
        shown = Path(run.remote_payload).name
    elif run.command is not None:
        command, shown = list(run.command), "task"
    else:
        assert payload_path is not None, "a payload or a command"
        command = [run.slurm.remote_python, "-u", Path(payload_path).name]
        shown = Path(payload_path).name
    checkout = None
    if run.code is not None:
        checkout = run.code.send(transport, run.slurm.base_path(), run.environment)
    if checkout is not None:
        run.metadata["pixi_deploy_code_snapshot"] = checkout.snapshot
    reader = ExceptionCapturingReader(
        RemoteFileMessageReader(transport, f"{folder}/messages.jsonl")
    )
    output = OutputForwarder()
    result: JobResult | None = None
    try:
        with open_pipes_session(
            context=context,
            context_injector=RemoteFileContextInjector(transport, f"{folder}/context.json"),
            message_reader=reader,
            extras=dict(run.extras),
        ) as session:
            spec = JobSpec(
                command=command,
                environment_path=run.environment.deployment_path,
                name=f"dagster-{_step_name(context, unique=False)}",
                resources=run.resources,
                env={
                    **{k: str(v) for k, v in run.extra_env.items()},
                    "PYTHONUNBUFFERED": "1",
                    **session.get_bootstrap_env_vars(),
                },
                workdir=folder if checkout is None else None,
                code=checkout,
                launcher=run.launcher,
            )
            if run.debug_mode:
                _keep_debug_copy(context, spec, folder, run)
            if run.allocation is not None:
                result = _run_step(context, run, spec, output)
            else:
                result = _run_job(context, run, spec, output)
    finally:
        keep = run.debug_mode or (not run.cleanup_on_failure and not (result and result.ok))
        if keep:
            context.log.info(f"[pixi-deploy] keeping the run folder {folder} on the cluster")
        else:
            with contextlib.suppress(Exception):  # cleanup must not hide the real outcome
                transport.run_script(_REMOVE, [folder], check=False)
    assert result is not None  # set, or the body raised
    if not result.ok:
        raise DagsterPipesExecutionError(
            failure_text(
                f"the payload {shown} failed on the cluster: {result.message()}",
                reader.remote_traceback(),
                result.stderr_tail or output.stderr_tail(),
            )
        )
    metadata = {**run.metadata, "pixi_deploy_mode": _mode(run)}
    if not run.implicit_materializations:
        return ReportedResults(session, metadata=metadata)
    return PipesClientCompletedInvocation(session, metadata=metadata)


def _run_job(context: Context, run: RemoteRun, spec: JobSpec, output: OutputForwarder) -> JobResult:
    client = run.slurm.client()
    job = run.code.submit(client, spec) if run.code is not None else client.submit(spec)
    context.log.info(f"[pixi-deploy] submitted Slurm job {job.id} (run folder {job.run_dir})")
    run.metadata["slurm_job_id"] = job.id
    try:
        return job.wait(timeout=run.timeout, on_stdout=output.on_stdout, on_stderr=output.on_stderr)
    except BaseException:  # interrupted run (DagsterExecutionInterruptedError), Ctrl-C, lost link
        context.log.warning(f"[pixi-deploy] cancelling Slurm job {job.id}")
        with contextlib.suppress(Exception):
            job.cancel()
        raise


def _run_step(
    context: Context, run: RemoteRun, spec: JobSpec, output: OutputForwarder
) -> JobResult:
    allocation = run.allocation
    assert allocation is not None
    try:
        session = allocation.get()
    except BaseException:
        with contextlib.suppress(Exception):
            allocation.release()
        raise
    holder = session.job.id if session.job is not None else "?"
    group = f" (component {allocation.het_group})" if allocation.het_group is not None else ""
    context.log.info(f"[pixi-deploy] running as a step of the {allocation.label} {holder}{group}")
    run.metadata["slurm_job_id"] = holder

    def step() -> JobResult:
        return session.run(
            spec,
            timeout=run.timeout,
            on_stdout=output.on_stdout,
            on_stderr=output.on_stderr,
            het_group=allocation.het_group,
        )

    try:
        result = run.code.resending(step) if run.code is not None else step()
    except BaseException:  # the step's srun died with its channel; free the allocation too
        context.log.warning(f"[pixi-deploy] releasing the {allocation.label} {holder}")
        with contextlib.suppress(Exception):
            allocation.release()
        raise
    run.metadata["slurm_step"] = result.job_id
    return result


def _mode(run: RemoteRun) -> str:
    return run.allocation.mode if run.allocation is not None else "slurm"


def run_id(context: Context) -> str:
    """The Dagster run id, safe as a path part."""
    return _run_id(context)


def _run_id(context: Context) -> str:
    """The Dagster run id, safe as a path part (``context.run_id`` is deprecated)."""
    run = getattr(context, "run", None)
    return _safe(run.run_id if run is not None else context.run_id)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "run"


def _step_name(context: Context, unique: bool = True) -> str:
    op_context = getattr(context, "op_execution_context", context)
    try:
        step = op_context.get_step_execution_context().step.key
    except Exception:  # outside a step (direct invocation in tests)
        step = "op"
    name = _safe(step)[:60]
    return f"{name}-{secrets.token_hex(4)}" if unique else name


def _keep_debug_copy(context: Context, spec: JobSpec, folder: str, run: RemoteRun) -> None:
    """debug_mode: what was submitted, kept locally for inspection (values of environment
    variables are left out: they may hold credentials)."""
    root = (
        Path(run.debug_dir) if run.debug_dir else Path(tempfile.gettempdir(), "pixi-deploy-dagster")
    )
    local = root / _run_id(context) / folder.rsplit("/", 1)[-1]
    local.mkdir(parents=True, exist_ok=True)
    (local / "launcher.sh").write_text(run.launcher.render(spec) if run.launcher else "")
    summary = {
        "remote_folder": folder,
        "environment_path": spec.environment_path,
        "command": list(spec.command or []),
        "sbatch_options": spec.resources.options(),
        "env_names": sorted(spec.env),
        "metadata": run.metadata,
    }
    (local / "job.json").write_text(json.dumps(summary, indent=2) + "\n")
    context.log.info(f"[pixi-deploy] debug_mode: submission details kept in {local.resolve()}")


def log_reporter(context: Context) -> Any:
    """Progress of deploys and code uploads as the run's log lines."""
    return _LogReporter(context)


class _LogReporter:
    """Deploy progress as Dagster log lines (no progress bars in a run log)."""

    def __init__(self, context: Context) -> None:
        self._context = context

    def step(self, message: str) -> None:
        self._context.log.info(f"[pixi-deploy] {message}")

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Any]:
        yield lambda n: None
