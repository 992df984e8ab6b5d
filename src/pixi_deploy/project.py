"""The project as an entry point ships it: its code snapshot, and the task it runs.

:mod:`pixi_deploy.api` calls these for ``submit`` and ``run`` (and Dagster can, for its
payloads), so the checks happen once and in the same order everywhere: the snapshot is taken
and checked (limits, ``--workdir``, activation scripts present) before anything goes over the
network, and a task is planned (unknown task, cycle, unsupported syntax) before the environment
is deployed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pixi_deploy.code.checkout import CodeCheckout, CodeSnapshotMissing, check_workdir
from pixi_deploy.code.remote import CodeStore
from pixi_deploy.code.select import CodeRules
from pixi_deploy.code.snapshot import Snapshot, take_snapshot, with_files
from pixi_deploy.errors import ConfigError, WorkspaceError
from pixi_deploy.pack.fetch import default_cache_dir
from pixi_deploy.progress import Reporter
from pixi_deploy.store.metadata import DeploymentMetadata
from pixi_deploy.tasks import TaskError, TaskPlan, environment_tasks, plan_task
from pixi_deploy.workspace import DEFAULT_ENVIRONMENT, Workspace, current_platform, load_workspace

T = TypeVar("T")
#: where a payload from outside the workspace goes in the snapshot (beside, never over, its files)
PAYLOAD_FOLDER = ".pixi-deploy-payload"

if TYPE_CHECKING:
    from pixi_deploy.slurm.client import SlurmClient
    from pixi_deploy.slurm.job import Job
    from pixi_deploy.slurm.spec import JobSpec
    from pixi_deploy.transport import Transport


def workspace_or_none(manifest_path: str | os.PathLike[str] | None) -> Workspace | None:
    """The workspace, or None when none is given and none is found from here (a job submitted
    with ``--deployment`` from outside a project ships no code)."""
    if manifest_path is not None:
        return load_workspace(Path(manifest_path))
    try:
        return load_workspace(None)
    except WorkspaceError:
        return None


def snapshot_workspace(
    workspace: Workspace | None,
    cache_dir: Path,
    reporter: Reporter,
    workdir: str | None = None,
    files: Mapping[str, Path] | None = None,
) -> tuple[Snapshot, str]:
    """The workspace's code snapshot (with ``files`` added at their snapshot paths) and
    ``--workdir`` checked against it (relative)."""
    snapshot = None
    if workspace is not None:
        rules = CodeRules.from_config(workspace.config)
        reporter.step(f"taking the code snapshot of {workspace.root}")
        snapshot = take_snapshot(workspace.root, rules, cache_dir)
    if files:
        snapshot = with_files(snapshot, files, Path(next(iter(files.values()))).parent)
    assert snapshot is not None, "a snapshot needs a workspace or files"
    relative = check_workdir(workdir)
    if relative and not snapshot.has_folder(relative):
        raise ConfigError(
            f"--workdir {workdir} is not a folder of the code snapshot",
            "give a folder of the workspace that holds shipped files, relative to its root",
        )
    reporter.step(
        f"code snapshot {snapshot.hash}: {len(snapshot.entries)} files, {snapshot.size / 1e6:.1f} MB"
    )
    return snapshot, relative


def place_payload(
    root: Path | None, payload: Path | None, extra_files: Sequence[str | os.PathLike[str]]
) -> tuple[dict[str, Path], str]:
    """Where a Dagster payload and its extra files go in the run's snapshot: (snapshot path ->
    local file, the payload's folder there). A payload inside the workspace stays where it is
    (its folder is the job's working directory, as its own folder is when it runs locally);
    one from elsewhere goes into a folder of its own. Extra files sit next to the payload,
    by name, as dagster-slurm places them."""
    folder = ""
    if payload is not None:
        if not payload.is_file():
            raise ConfigError(f"the payload {payload} does not exist", "pass an existing file")
        local = payload.resolve()
        inside = root is not None and local.is_relative_to(root.resolve())
        if root is not None and inside:
            folder = local.parent.relative_to(root.resolve()).as_posix()
            folder = "" if folder == "." else folder
        elif root is not None:
            folder = PAYLOAD_FOLDER
    prefix = f"{folder}/" if folder else ""
    files: dict[str, Path] = {}
    for extra in extra_files:
        name = Path(extra).name
        if not Path(extra).is_file():
            raise ConfigError(f"the extra file {extra} does not exist", "pass an existing file")
        files[prefix + name] = Path(extra)
    if payload is not None:
        if prefix + payload.name in files:
            raise ConfigError(
                f"the extra file {files[prefix + payload.name]} has the payload's name",
                "rename one of them",
            )
        files[prefix + payload.name] = payload
    return files, folder


def check_activation_shipped(
    workspace: Workspace, snapshot: Snapshot, environment: str, platform: str
) -> None:
    """Every activation script the manifest names must be in the snapshot: the job sources it
    from its working copy."""
    activation = workspace.activation(environment, platform)
    activation.check(workspace.root)
    paths = snapshot.by_path()
    for script in activation.scripts:
        if script.path not in paths:
            raise WorkspaceError(
                f"the activation script {script.path} is not in the code snapshot",
                "remove it from [tool.pixi-deploy] exclude (or track it in git)",
            )


def task_environment(
    workspace: Workspace, task: str, environment: str | None, platform: str | None
) -> str:
    """The environment a task runs in when ``-e`` is not given, as pixi picks it: the default
    environment's task (or its ``default-environment``), else the one environment that has it."""
    if environment:
        return environment
    configured = workspace.config.get("environment")
    if configured:
        return str(configured)
    where = platform or _any_platform(workspace)
    pixi = workspace.pixi_table
    found = environment_tasks(pixi, DEFAULT_ENVIRONMENT, where).get(task)
    if found is not None:
        return found.default_environment or DEFAULT_ENVIRONMENT
    having = [
        name
        for name in workspace.environment_names()
        if name != DEFAULT_ENVIRONMENT and task in _tasks_or_empty(workspace, name, where)
    ]
    if len(having) == 1:
        return having[0]
    if len(having) > 1:
        raise TaskError(
            f"task '{task}' is defined in environments {', '.join(having)}",
            "pick one with -e/--environment",
        )
    return DEFAULT_ENVIRONMENT  # plan_task says the task does not exist


def plan(
    workspace: Workspace,
    task: str,
    words: Sequence[str],
    environment: str,
    platforms: Sequence[str],
) -> TaskPlan:
    """Plan ``task`` for each candidate platform (all must work: the cluster's is one of them)
    and return the plan for the first."""
    plans = []
    for platform in platforms:
        keys = frozenset(k for k, _ in workspace.activation(environment, platform).env)
        tasks = environment_tasks(workspace.pixi_table, environment, platform)
        plans.append(plan_task(tasks, task, words, environment, keys))
    return plans[0]


def candidate_platforms(workspace: Workspace, environment: str, platform: str | None) -> list[str]:
    """The platform a job may run on: the given one, the manifest's default, else every locked
    Linux platform of the environment (the cluster's is learnt when it deploys)."""
    chosen = platform if platform not in (None, "", "auto") else workspace.config.get("platform")
    if chosen:
        return [str(chosen)]
    locked = workspace.locked_environments().get(environment) or []
    return [p for p in locked if p.startswith("linux-")] or locked or [current_platform()]


def _any_platform(workspace: Workspace) -> str:
    return candidate_platforms(workspace, DEFAULT_ENVIRONMENT, None)[0]


def _tasks_or_empty(workspace: Workspace, environment: str, platform: str) -> set[str]:
    try:
        return set(environment_tasks(workspace.pixi_table, environment, platform))
    except WorkspaceError:
        return set()


def local_command(
    workspace: Workspace | None,
    command: Sequence[str],
    task: str | None,
    environment: str,
    platform: str,
) -> tuple[list[str], Path | None, dict[str, str]]:
    """(argv, cwd, extra variables) of a local run: the project root is the workspace, and a
    task runs there, as with ``pixi run``."""
    if workspace is None:
        return list(command), None, {}
    env = {"PIXI_PROJECT_ROOT": str(workspace.root)}
    if task is None:
        return list(command), None, env
    planned = plan(workspace, task, command, environment, [platform])
    return planned.command(), workspace.root, env


@dataclass
class CodeShipping:
    """One submit's code and task, from the first check to the job: what :func:`api.submit`
    does besides deploying the environment."""

    workspace: Workspace | None
    snapshot: Snapshot | None
    workdir: str
    task: str | None
    environment: str | None  # the environment to deploy (a task's, when -e was not given)
    cache_dir: Path
    reporter: Reporter
    check_activation: bool
    store: CodeStore | None = None

    @classmethod
    def start(
        cls,
        manifest_path: str | os.PathLike[str] | None,
        deployment: object | None,
        code: bool,
        workdir: str | None,
        task: str | None,
        words: Sequence[str],
        environment: str | None,
        platform: str | None,
        cache_dir: str | os.PathLike[str] | None,
        reporter: Reporter,
        payload: Path | None = None,
        extra_files: Sequence[str | os.PathLike[str]] = (),
    ) -> CodeShipping:
        """Everything that can be refused before the network: options, task plan, snapshot.

        ``payload`` and ``extra_files`` (Dagster's) join the snapshot (:func:`place_payload`),
        even without a workspace, and the run starts in the payload's folder."""
        if deployment is None:
            workspace: Workspace | None = load_workspace(
                Path(manifest_path) if manifest_path else None
            )
        else:
            workspace = workspace_or_none(manifest_path)
        if task is not None:
            if workspace is None:
                raise ConfigError(
                    "--task needs the workspace", "submit from the project or pass --manifest-path"
                )
            if not code:
                raise ConfigError(
                    "--task runs in the project's code snapshot", "drop --no-code to use a task"
                )
            if workdir:
                raise ConfigError(
                    "--workdir does not apply to --task",
                    "tasks run in the project's root or their own cwd, as with pixi run",
                )
            environment = task_environment(workspace, task, environment, platform)
            plan(
                workspace,
                task,
                words,
                environment,
                candidate_platforms(workspace, environment, platform),
            )
        files: dict[str, Path] = {}
        if payload is not None or extra_files:
            if workdir:
                raise ConfigError("a payload runs in its own folder; drop the workdir")
            root = workspace.root if workspace is not None else None
            files, workdir = place_payload(root, payload, extra_files)
        if not code or (workspace is None and not files):
            if workdir and not workdir.startswith("/"):
                raise ConfigError(
                    f"--workdir {workdir} is relative, but the job has no code snapshot",
                    "give an absolute folder on the cluster, or submit from the project",
                )
            snapshot, relative = None, ""
        folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        if code and (workspace is not None or files):
            snapshot, relative = snapshot_workspace(workspace, folder, reporter, workdir, files)
        return cls(
            workspace, snapshot, relative, task, environment, folder, reporter, deployment is None
        )

    def command(self, words: Sequence[str], metadata: DeploymentMetadata) -> list[str]:
        """The job's argv: the planned task for the environment's platform, or the command."""
        if self.task is not None and self.workspace is not None:
            planned = plan(
                self.workspace, self.task, words, metadata.environment, [metadata.platform]
            )
            return planned.command()
        if not words:
            raise ConfigError("no command given", "put it after `--`, e.g. -- python train.py")
        return list(words)

    def send(
        self, transport: Transport, base: str, metadata: DeploymentMetadata
    ) -> CodeCheckout | None:
        """Put the snapshot on the cluster (nothing moves when it is there)."""
        if self.snapshot is None:
            return None
        if self.check_activation and self.workspace is not None:
            check_activation_shipped(
                self.workspace, self.snapshot, metadata.environment, metadata.platform
            )
        self.store = CodeStore(transport, base, cache_dir=self.cache_dir)
        self.store.ensure(self.snapshot, self.reporter)
        return CodeCheckout(self.store.base, self.snapshot.hash, self.workdir)

    def submit(self, client: SlurmClient, spec: JobSpec) -> Job:
        """sbatch, with :meth:`resending`."""
        return self.resending(lambda: client.submit(spec))

    def resending(self, start: Callable[[], T]) -> T:
        """``start()`` (sbatch, a session step, a run on the login node); when the cluster no
        longer has the snapshot (pruned since this machine sent it), send it again and start
        once more."""
        try:
            return start()
        except CodeSnapshotMissing:
            if self.store is None or self.snapshot is None:
                raise
            self.reporter.step(f"code snapshot {self.snapshot.hash} was pruned; sending it again")
            self.store.forget(self.snapshot.hash)
            self.store.ensure(self.snapshot, self.reporter)
            return start()
