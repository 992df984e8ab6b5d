"""Executor: run Python functions as Slurm jobs from a laptop, over SSH, in a locked environment.

submitit's model (``executor.submit(fn, *args)`` -> a job whose ``result()`` is the value), with
the environment coming from the workspace's pixi.lock instead of "whatever Python the cluster
has": the first submit deploys the environment through the application layer
(:func:`pixi_deploy.api.environment_on_cluster`, the same route as ``deploy`` and ``submit``;
a no-op round trip when it is there) and every job is submitted by :func:`pixi_deploy.api.submit`.
The function and its arguments travel in the job's run folder as cloudpickle pickles (the
environment must have cloudpickle, and the same Python minor version as this interpreter:
both are checked once, with a message that says what to add); the runner (``runner.py``)
writes each task's return value or exception to a result file, which comes back over the same
SSH connection.

    from pixi_deploy.slurm import Executor, JobResources
    executor = Executor(manifest_path="pixi.toml", resources=JobResources(time="10", mem="2G"))
    job = executor.submit(sum, [1, 2, 3])
    assert job.result() == 6
"""

from __future__ import annotations

import dataclasses
import os
import site
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixi_deploy import api
from pixi_deploy.errors import ConfigError
from pixi_deploy.store.image import mount_and_run_argv
from pixi_deploy.transport import RemoteCommandError, sh_c

from . import remote, runner
from .function_job import ArrayTracker, FunctionJob
from .spec import JobResources

if TYPE_CHECKING:
    from pixi_deploy.progress import Reporter
    from pixi_deploy.transport import Transport

    from .job import Job

_HERE = Path(__file__).resolve().parent
# submitit's parameter names -> (JobResources field, conversion)
_SUBMITIT_NAMES: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "timeout_min": ("time", lambda v: str(int(v))),
    "mem_gb": ("mem", lambda v: f"{int(float(v) * 1024)}M"),
    "tasks_per_node": ("ntasks_per_node", int),
    "slurm_partition": ("partition", str),
    "slurm_account": ("account", str),
    "slurm_qos": ("qos", str),
    "slurm_constraint": ("constraint", str),
    "gpus_per_node": ("gpus", str),
}


class Executor:
    """Submit Python functions as Slurm jobs in the workspace's environment (see module doc).

    ``resources`` are the jobs' sbatch options; a job of several tasks (``nodes``,
    ``ntasks``, ``ntasks_per_node``) runs the function once per task under ``srun``, each
    task learning its rank from :class:`~pixi_deploy.slurm.JobEnvironment`. ``deployment``
    names a deployment_metadata.json of an environment already on the cluster instead of a
    workspace. The cluster comes from ``transport`` (default: the process's connection from
    ``SLURM_EDGE_NODE_*``), runs live under its base path. ``poll_interval`` is how often
    waiting jobs are looked up (one squeue for all of them; an array's tasks at most once
    per ``SlurmClient.array_poll_interval``).
    """

    def __init__(
        self,
        manifest_path: api.PathLike | None = None,
        environment: str | None = None,
        resources: JobResources | None = None,
        *,
        platform: str | None = None,
        deployment: api.PathLike | None = None,
        name: str = "pixi-deploy-function",
        python: str = "python",
        array_parallelism: int | None = None,
        poll_interval: float = 0.5,
        transport: Transport | None = None,
        cache_dir: api.PathLike | None = None,
        inject: Sequence[api.PathLike] = (),
        build_sdists: bool = False,
        reporter: Reporter | None = None,
    ) -> None:
        self.resources = dataclasses.replace(resources) if resources else JobResources()
        self.name = name
        self.python = python
        self.array_parallelism = array_parallelism
        self.poll_interval = poll_interval
        self.dependency: str | None = None
        self.after: list[Job | FunctionJob | str] = []
        self._request = api.EnvironmentRequest(
            manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
        )
        self._deployment = deployment
        self._reporter = reporter
        self._transport = transport
        self._env_path: str | None = None
        self._lock = threading.Lock()

    # -- parameters -----------------------------------------------------------------------
    def update_parameters(self, **changes: Any) -> None:
        """Change the resources of later jobs: any JobResources field (``nodes=2``,
        ``time="10"``...), submitit's names (``timeout_min``, ``mem_gb``,
        ``tasks_per_node``, ``slurm_partition``...), ``name``, ``array_parallelism``,
        ``dependency`` (Slurm's syntax) and ``after`` (jobs to wait for, afterok)."""
        fields = {f.name for f in dataclasses.fields(JobResources)}
        updates: dict[str, Any] = {}
        for key, value in changes.items():
            if key in ("name", "array_parallelism", "dependency"):
                setattr(self, key, value)
            elif key in ("after", "slurm_array_parallelism"):
                if key == "after":
                    self.after = list(value)
                else:
                    self.array_parallelism = value
            elif key in fields:
                updates[key] = value
            elif key in _SUBMITIT_NAMES:
                field, convert = _SUBMITIT_NAMES[key]
                updates[field] = convert(value)
            else:
                known = sorted(fields | set(_SUBMITIT_NAMES) | {"name", "after", "dependency"})
                raise ConfigError(
                    f"unknown Executor parameter {key!r}", "use one of " + ", ".join(known)
                )
        self.resources = dataclasses.replace(self.resources, **updates)

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            from pixi_deploy.transport import get_transport

            self._transport = get_transport()
        return self._transport

    # -- submitting -------------------------------------------------------------------------
    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> FunctionJob:
        """Run ``fn(*args, **kwargs)`` as one job (once per task for a multi-task job)."""
        files = {
            runner.FUNCTION_FILE: _dumps(fn),
            runner.arguments_file(0): _dumps((args, kwargs)),
        }
        job = self._submit(files, array=None)
        return FunctionJob(job, None, None, self._task_count())

    def map_array(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[FunctionJob]:
        """``fn`` over the elements (zipped like ``map``) as ONE job array: element i runs as
        array task i; returns one FunctionJob per element, in order."""
        items = list(zip(*iterables, strict=False))
        if not items:
            return []
        files = {runner.FUNCTION_FILE: _dumps(fn)}
        for index, item in enumerate(items):
            files[runner.arguments_file(index)] = _dumps((item, {}))
        array = f"0-{len(items) - 1}"
        if self.array_parallelism:
            array += f"%{int(self.array_parallelism)}"
        job = self._submit(files, array=array)
        tracker = ArrayTracker(job, len(items))
        tasks = self._task_count()
        return [FunctionJob(job, index, tracker, tasks) for index in range(len(items))]

    def _submit(self, files: dict[str, bytes], array: str | None) -> Job:
        env_path = self.environment_path()
        files[runner.RUNNER_FILE] = (_HERE / "runner.py").read_bytes()
        files[runner.JOBENV_FILE] = (_HERE / "jobenv.py").read_bytes()
        start = (
            "import os, runpy, sys; d = os.environ['PIXI_DEPLOY_RUN_DIR']; "
            f"sys.argv = [{runner.RUNNER_FILE!r}, d]; "
            f"runpy.run_path(os.path.join(d, {runner.RUNNER_FILE!r}), run_name='__main__')"
        )
        command = [self.python, "-c", start]
        if self._task_count() > 1 or (self.resources.nodes or 1) > 1:
            command = ["srun", "--kill-on-bad-exit=1", *command]
        job = api.submit(
            command,
            resources=dataclasses.replace(self.resources),
            job_name=self.name,
            array=array,
            dependency=self.dependency,
            after=[str(getattr(a, "id", a)) for a in self.after],  # a task of an array: ID_N
            files=files,
            environment_path=env_path,
            code=False,  # the function travels pickled; nothing runs from a checkout
            transport=self.transport,
        )
        # the process's shared client: asking for faster polling speeds up every waiter
        job.client.poll_interval = min(job.client.poll_interval, self.poll_interval)
        return job

    def _task_count(self) -> int:
        r = self.resources
        return int(r.ntasks or (r.nodes or 1) * (r.ntasks_per_node or 1))

    # -- the environment ----------------------------------------------------------------------
    def environment_path(self) -> str:
        """The environment on the cluster (deployed on the first call, then remembered),
        checked for a python of this interpreter's version with cloudpickle."""
        with self._lock:
            if self._env_path is None:
                r = self._request
                path = api.environment_on_cluster(
                    deployment=self._deployment,
                    manifest_path=r.manifest_path,
                    environment=r.environment,
                    platform=r.platform,
                    cache_dir=r.cache_dir,
                    inject=r.inject,
                    build_sdists=r.build_sdists,
                    reporter=self._reporter,
                    transport=self.transport,
                )
                self._check_python(path)
                self._env_path = path
            return self._env_path

    def _check_python(self, env_path: str) -> None:
        probe = sh_c(remote.PYTHON_PROBE, [env_path, self.python])
        try:
            try:
                out = self.transport.run(probe).stdout
            except RemoteCommandError as error:
                if "pixi-deploy-image" not in error.stderr:
                    raise
                # a squashfs deployment: probe it mounted on the login node, as a job would
                real = self.transport.run(["readlink", "-f", "--", env_path]).stdout.strip()
                head, _, key = real.rpartition("/envs/")
                image = f"{head}/images/{key}.sqfs"
                out = self.transport.run(mount_and_run_argv(image, real, "", probe)).stdout
        except RemoteCommandError as error:
            if "pixi-deploy-no-python" in error.stderr:
                raise ConfigError(
                    f"the environment {env_path} has no `{self.python}`",
                    "add python to the environment (pixi add python)",
                ) from error
            raise ConfigError(
                f"the environment {env_path} cannot be activated on the cluster"
                f" ({error.stderr.strip()[:120]})",
                "deploy it again with `pixi-deploy deploy --target ssh`",
            ) from error
        facts = dict(line.split(" ", 1) for line in out.splitlines() if " " in line)
        if "cloudpickle" not in facts:
            raise ConfigError(
                f"the environment {env_path} has no cloudpickle, which the Executor needs to"
                " ship functions",
                "add it to the workspace (pixi add cloudpickle) and submit again",
            )
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if facts.get("python") != here:
            raise ConfigError(
                f"the environment's Python is {facts.get('python')} but this one is {here};"
                " pickled functions load only in the same Python version",
                f"use python {here}.* in the environment, or submit from a Python"
                f" {facts.get('python')} interpreter",
            )


def _dumps(obj: Any) -> bytes:
    """cloudpickle, with the module of a function defined in local code (not an installed
    package, which the environment may have too) pickled by value, so the job needs no copy
    of that module."""
    try:
        import cloudpickle
    except ImportError as exc:
        raise ConfigError(
            "cloudpickle is not installed in this Python", "pip install cloudpickle"
        ) from exc
    modules = _local_modules(obj)
    with _BY_VALUE_LOCK:
        for module in modules:
            cloudpickle.register_pickle_by_value(module)
        try:
            return bytes(cloudpickle.dumps(obj))
        finally:
            for module in modules:
                cloudpickle.unregister_pickle_by_value(module)


_BY_VALUE_LOCK = threading.Lock()


def _local_modules(obj: Any) -> list[Any]:
    name = getattr(obj, "__module__", None)
    if not isinstance(name, str) or name in ("__main__", "builtins"):
        return []
    module = sys.modules.get(name)
    if module is None or name.startswith("pixi_deploy"):
        return []
    path = getattr(module, "__file__", None)
    if not path:
        return []
    installed = [*site.getsitepackages(), site.getusersitepackages(), sys.prefix, sys.base_prefix]
    real = os.path.realpath(path)
    if any(real.startswith(os.path.realpath(p) + os.sep) for p in installed if p):
        return []
    return [module]
