"""The application layer: every operation pixi-deploy has, as one Python function each.

The CLI, the Slurm commands, the Dagster resources and Python users all come through here, so an
environment is resolved, prepared (path dependencies built, ``--inject`` files added, the
workspace's channel settings, mirrors and credentials applied), checked and given a store in one
place. A behaviour that differed between ``deploy``, ``submit`` and Dagster would be a bug; with
one route there is nothing to differ.

Every function takes pixi's conventions as keywords (``manifest_path``, ``environment``,
``platform``) with the same defaults as the CLI (``[tool.pixi-deploy]`` in the manifest, then the
environment variables the README names), and returns data rather than printing::

    import pixi_deploy
    metadata = pixi_deploy.deploy(manifest_path="pixi.toml", environment="prod", target="ssh")
    print(metadata.deployment_path)
"""

from __future__ import annotations

import os
import sys
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixi_deploy.channels import ChannelSettings
from pixi_deploy.errors import ConfigError, WorkspaceError
from pixi_deploy.pack import DownloadCache, PackMetadata, UnpackResult, read_metadata
from pixi_deploy.pack import pack_digest as digest_of_pack
from pixi_deploy.pack import unpack as unpack_pack
from pixi_deploy.pack.format import normalize_digest
from pixi_deploy.pack.inject import prepare_environment
from pixi_deploy.pack.sources import is_stream, local_path, open_stream
from pixi_deploy.pack.streamed import unpack_stream
from pixi_deploy.pack.verify import check_digest
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.store import DeploymentMetadata, LocalStore, Store, run_in_environment
from pixi_deploy.store.image import check_format
from pixi_deploy.target import TargetFacts, check_target
from pixi_deploy.workspace import (
    ResolvedEnvironment,
    Workspace,
    load_workspace,
    refuse_unbuilt_sources,
)

if TYPE_CHECKING:
    from pixi_deploy.code.checkout import CodeCheckout
    from pixi_deploy.code.remote import CodeStore
    from pixi_deploy.containers.image import ImageOptions, ImageResult
    from pixi_deploy.project import CodeShipping
    from pixi_deploy.slurm.job import Job
    from pixi_deploy.slurm.spec import JobResources
    from pixi_deploy.transport import Transport

TARGETS = ("local", "ssh")
PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class EnvironmentRequest:
    """Which environment, and how to prepare it: what every command that ships one is given."""

    manifest_path: PathLike | None = None
    environment: str | None = None
    platform: str | None = None
    cache_dir: PathLike | None = None
    inject: Sequence[PathLike] = ()
    build_sdists: bool = False


class Preparation:
    """A workspace, its download cache with the workspace's channel settings, and the one way
    a locked environment becomes the environment that is shipped.

    Every entry point gets its environments from :meth:`resolve` (or hands :meth:`prepare` to
    a store that resolves per platform), so path dependencies, injected files, mirrors and
    credentials are applied the same way whether the caller is ``deploy``, ``submit``,
    ``image`` or Dagster."""

    def __init__(self, request: EnvironmentRequest, reporter: Reporter | None = None) -> None:
        self.request = request
        self.reporter = reporter or NullReporter()
        manifest = Path(request.manifest_path) if request.manifest_path is not None else None
        self.workspace: Workspace = load_workspace(manifest)
        cache_dir = Path(request.cache_dir) if request.cache_dir is not None else None
        self.cache = DownloadCache(cache_dir, ChannelSettings.load(self.workspace.root))

    @property
    def environment(self) -> str | None:
        return self.request.environment

    def resolve(self, platform: str | None = None) -> ResolvedEnvironment:
        """The environment for ``platform`` (default: the request's, then the manifest's, then
        this machine's), prepared."""
        locked = self.workspace.resolve(self.request.environment, platform or self.request.platform)
        return self.prepare(locked)

    def prepare(self, resolved: ResolvedEnvironment) -> ResolvedEnvironment:
        """Built path dependencies and injected files in; refused if anything stays that no
        target could install (a pixi-build source package nobody built, a missing activation
        script)."""
        if resolved.activation is not None:  # a missing activation script: before anything moves
            resolved.activation.check(self.workspace.root)
        prepared = prepare_environment(
            resolved,
            self.cache,
            inject=[Path(p) for p in self.request.inject],
            build_sdists=self.request.build_sdists,
            reporter=self.reporter,
        )
        refuse_unbuilt_sources(prepared)
        return prepared

    @property
    def changes_identity(self) -> bool:
        """Whether preparing can change the environment's hash (built or injected files): a
        remote deploy then has to learn the platform before it can ask for the environment."""
        request = self.request
        return bool(request.inject or request.build_sdists or self._has_path_dependencies())

    def _has_path_dependencies(self) -> bool:
        name = self.request.environment or self.workspace.config.get("environment") or "default"
        env = self.workspace.lock.environment(str(name))
        if env is None:
            return False
        return any(
            "://" not in str(p.location) or str(p.location).startswith("file://")
            for platform in env.platforms()
            for p in env.pypi_packages_for_platform(platform) or []
        )


def resolve_here(preparation: Preparation) -> ResolvedEnvironment:
    """The prepared environment for a target on this machine, refused if this machine cannot
    run it (glibc, CUDA driver: `pixi_deploy.target`)."""
    resolved = preparation.resolve()
    check_target(
        resolved.virtual_packages,
        TargetFacts.here(),
        f"environment '{resolved.name}' ({resolved.platform})",
    )
    return resolved


# ----------------------------------------------------------------------------------------------
# Workspace and packs
# ----------------------------------------------------------------------------------------------


def inspect(manifest_path: PathLike | None = None) -> dict[str, Any]:
    """What ``inspect --json`` prints: environments, platforms, counts, hashes, problems, and
    each environment's tasks per platform (with whether pixi-deploy can run them)."""
    from pixi_deploy.tasks import environment_tasks

    workspace = load_workspace(Path(manifest_path) if manifest_path else None)
    description = workspace.describe()
    for env_name, entry in description["environments"].items():
        for platform, summary in entry["platforms"].items():
            try:
                found = environment_tasks(workspace.pixi_table, env_name, platform)
            except WorkspaceError as error:
                description["problems"].append(f"tasks of '{env_name}': {error.message}")
                continue
            summary["tasks"] = {name: task.describe() for name, task in sorted(found.items())}
    return description


@dataclass(frozen=True)
class PackOutcome:
    path: Path
    size: int
    resolved: ResolvedEnvironment = field(repr=False)
    files: int | None = None  # archives in a pack (None for a self-extracting installer)
    self_extracting: bool = False
    #: sha256:<hex> of a pack's metadata (`unpack --expect-digest`), or of the whole installer
    digest: str = ""


def pack(
    *,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    output: PathLike | None = None,
    compress: bool = False,
    self_extracting: bool = False,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    build_sdists: bool = False,
    reporter: Reporter | None = None,
) -> PackOutcome:
    """Pack one environment for one platform into one file that installs offline."""
    request = EnvironmentRequest(
        manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
    )
    preparation = Preparation(request, reporter)
    resolved = preparation.resolve()
    out = Path(output) if output is not None else None
    if self_extracting:
        from pixi_deploy.pack.selfextract import write_self_extracting

        installer = write_self_extracting(
            resolved, out, cache=preparation.cache, reporter=preparation.reporter
        )
        return PackOutcome(installer.path, installer.size, resolved, None, True, installer.digest)
    from pixi_deploy.pack import write_pack

    written = write_pack(
        resolved,
        out,
        compression="zstd" if compress else "none",
        cache=preparation.cache,
        reporter=preparation.reporter,
    )
    return PackOutcome(
        written.path, written.size, resolved, len(written.metadata.files), False, written.digest
    )


def unpack(
    pack_file: PathLike,
    directory: PathLike,
    *,
    expect_digest: str | None = None,
    reporter: Reporter | None = None,
) -> UnpackResult:
    """Install a pack into ``directory`` (new or empty), offline, with its ``activate.sh``.
    ``pack_file``: a file, ``file://`` URL, ``-`` (standard input) or ``https://`` /
    ``http://`` URL; the last two are read as a stream, once, and need disk space for the
    environment only. Refused first: a pack whose digest is not ``expect_digest``, then a
    machine that cannot run the environment (glibc, CUDA driver)."""
    if expect_digest is not None:
        expect_digest = normalize_digest(expect_digest)
    if isinstance(pack_file, str) and is_stream(pack_file):
        with open_stream(pack_file) as (source, label):
            return unpack_stream(
                source,
                label,
                Path(directory),
                reporter=reporter,
                expect_digest=expect_digest,
                check=_check_here,
            )
    pack = local_path(pack_file) if isinstance(pack_file, str) else Path(pack_file)
    if pack.is_file():  # else unpack says that it does not exist
        if expect_digest is not None:
            check_digest(pack_digest(pack), expect_digest, pack)
        _check_here(read_metadata(pack))
    return unpack_pack(pack, Path(directory), reporter=reporter, expect_digest=expect_digest)


def _check_here(metadata: PackMetadata) -> None:
    """This machine can run the pack's environment (glibc, CUDA driver)."""
    check_target(
        metadata.virtual_packages,
        TargetFacts.here(),
        f"environment '{metadata.environment}' ({metadata.platform})",
    )


def pack_info(pack_file: PathLike) -> PackMetadata:
    """What a pack holds, from its metadata alone."""
    return read_metadata(Path(pack_file))


def pack_digest(pack_file: PathLike) -> str:
    """The digest that pins a pack (``sha256:<hex>`` of its metadata): what ``pack`` and
    ``pack-info`` print and ``unpack --expect-digest`` compares."""
    return digest_of_pack(Path(pack_file))


# ----------------------------------------------------------------------------------------------
# Stores: deploy, run, list, prune
# ----------------------------------------------------------------------------------------------


def local_base(workspace: Workspace | None, base: PathLike | None) -> Path:
    """The local store's folder: ``base``, else ``[tool.pixi-deploy] base``, else
    ``$PIXI_DEPLOY_BASE``."""
    chosen = (
        base
        or (workspace.config.get("base") if workspace else None)
        or os.environ.get("PIXI_DEPLOY_BASE")
    )
    if not chosen:
        raise ConfigError(
            "no local store folder given", "pass --base DIR (or set PIXI_DEPLOY_BASE)"
        )
    return Path(str(chosen)).expanduser()


def deploy(
    *,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    target: str = "local",
    base: PathLike | None = None,
    name: str | None = None,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    build_sdists: bool = False,
    reporter: Reporter | None = None,
    transport: Transport | None = None,
    format: str | None = None,
) -> DeploymentMetadata:
    """Deploy an environment to a content-addressed store (``target`` "local" or "ssh"),
    reusing it when it is there; returns its deployment metadata.

    ``format`` "squashfs" publishes one image, BASE/images/<hash>.sqfs, that jobs mount at the
    environment's path (default: ``[tool.pixi-deploy] format``, else "directory").

    For ``ssh`` the cluster comes from ``transport`` (default: the process's connection from
    ``SLURM_EDGE_NODE_*``) and ``base`` defaults to ``SLURM_DEPLOYMENT_BASE_PATH``; the platform
    defaults to the edge node's."""
    request = EnvironmentRequest(
        manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
    )
    return deploy_prepared(
        Preparation(request, reporter),
        target=target,
        base=base,
        name=name,
        transport=transport,
        format=format,
    )


def deploy_prepared(
    preparation: Preparation,
    *,
    target: str = "local",
    base: PathLike | None = None,
    name: str | None = None,
    transport: Transport | None = None,
    format: str | None = None,
) -> DeploymentMetadata:
    """:func:`deploy` for a caller that holds a :class:`Preparation` already."""
    reporter = preparation.reporter
    chosen = check_format(format or preparation.workspace.config.get("format"))
    if target == "local":
        store = LocalStore(local_base(preparation.workspace, base), preparation.cache)
        return store.deploy(resolve_here(preparation), name=name, reporter=reporter, format=chosen)
    if target == "ssh":
        from pixi_deploy.store.remote import RemoteStore

        remote = RemoteStore(transport or _transport(), str(base) if base else None)
        return remote.deploy(
            preparation.workspace,
            preparation.environment,
            preparation.request.platform,
            name=name,
            cache=preparation.cache,
            reporter=reporter,
            prepare=preparation.prepare,
            prepare_changes_identity=preparation.changes_identity,
            format=chosen,
        )
    raise _unknown_target(target)


def run(
    command: Sequence[str] = (),
    *,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    base: PathLike | None = None,
    deployment: PathLike | None = None,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    task: str | None = None,
    reporter: Reporter | None = None,
    target: str = "local",
    code: bool = True,
    workdir: str | None = None,
    build_sdists: bool = False,
    on_stdout: Callable[[str], None] | None = None,
    on_stderr: Callable[[str], None] | None = None,
    transport: Transport | None = None,
) -> int:
    """Run ``command`` in a deployment (deployed first unless ``deployment`` names a
    deployment_metadata.json); returns its exit code.

    With ``task``, runs that task of the manifest (``command`` are its arguments) as ``pixi
    run`` would: dependencies first, in the workspace's root (``PIXI_PROJECT_ROOT``).

    ``target="ssh"`` runs it on the cluster's login node, in the environment deployed there
    and in a working copy of the workspace's code snapshot, as :func:`submit` would but at
    once and without Slurm (:mod:`pixi_deploy.slurm.login`): output lines go to
    ``on_stdout`` / ``on_stderr`` (default: this process's), ``code`` / ``workdir`` as for
    :func:`submit`, and an interrupt (KeyboardInterrupt, SIGTERM) stops the remote process."""
    from pixi_deploy import project

    if target == "ssh":
        return _run_on_login_node(
            command,
            manifest_path=manifest_path,
            environment=environment,
            platform=platform,
            base=base,
            deployment=deployment,
            cache_dir=cache_dir,
            inject=inject,
            build_sdists=build_sdists,
            task=task,
            code=code,
            workdir=workdir,
            reporter=reporter or NullReporter(),
            on_stdout=on_stdout or _print_to(sys.stdout),
            on_stderr=on_stderr or _print_to(sys.stderr),
            transport=transport,
        )
    if target != "local":
        raise _unknown_target(target)
    if workdir or not code:
        raise ConfigError(
            "--workdir and --no-code apply to --target ssh",
            "a local run uses the workspace itself; drop them",
        )

    workspace = project.workspace_or_none(manifest_path) if deployment is not None else None
    if task is not None and deployment is not None and workspace is None:
        raise ConfigError(
            "--task needs the workspace", "run it in the project or pass --manifest-path"
        )
    if deployment is not None:
        metadata = DeploymentMetadata.read(Path(deployment))
        argv, cwd, env = project.local_command(
            workspace, command, task, metadata.environment, metadata.platform
        )
        return run_in_environment(Path(metadata.deployment_path), argv, cwd=cwd, env=env)
    request = EnvironmentRequest(
        manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
    )
    if task is not None:
        ws = load_workspace(Path(manifest_path) if manifest_path else None)
        request = replace(
            request, environment=project.task_environment(ws, task, environment, platform)
        )
    preparation = Preparation(request, reporter)
    resolved = resolve_here(preparation)
    argv, cwd, env = project.local_command(
        preparation.workspace, command, task, resolved.name, resolved.platform
    )
    store = LocalStore(local_base(preparation.workspace, base), preparation.cache)
    metadata = store.deploy(resolved, reporter=preparation.reporter)
    return store.run(metadata, argv, cwd=cwd, env=env)


def _run_on_login_node(
    command: Sequence[str],
    *,
    manifest_path: PathLike | None,
    environment: str | None,
    platform: str | None,
    base: PathLike | None,
    deployment: PathLike | None,
    cache_dir: PathLike | None,
    inject: Sequence[PathLike],
    build_sdists: bool,
    task: str | None,
    code: bool,
    workdir: str | None,
    reporter: Reporter,
    on_stdout: Callable[[str], None],
    on_stderr: Callable[[str], None],
    transport: Transport | None,
) -> int:
    from pixi_deploy.slurm.login import run_on_login_node
    from pixi_deploy.slurm.spec import JobSpec

    def connect() -> tuple[Transport, str]:
        connection = transport or _transport()
        root = connection.expand_path(str(base)) if base else connection.base_path
        if not root:
            raise ConfigError(
                "SLURM_DEPLOYMENT_BASE_PATH is not set", "set it, or pass --base with --target ssh"
            )
        return connection, root

    shipped = _ship_to_cluster(
        command,
        connect=connect,
        environment_path=None,
        deployment=deployment,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        code=code,
        workdir=workdir,
        task=task,
        reporter=reporter,
    )
    spec = JobSpec(
        command=shipped.argv,
        environment_path=shipped.metadata.deployment_path,
        name="pixi-deploy-run",
        code=shipped.checkout,
        workdir=workdir if shipped.checkout is None else None,
    )
    return shipped.shipping.resending(
        lambda: run_on_login_node(
            shipped.transport,
            shipped.base,
            spec,
            on_stdout,
            on_stderr,
            on_start=lambda run_dir: reporter.step(f"running on the login node in {run_dir}"),
        )
    )


def _print_to(stream: Any) -> Callable[[str], None]:
    def write(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    return write


def open_store(
    target: str = "local", base: PathLike | None = None, *, transport: Transport | None = None
) -> Store:
    """The store ``list`` and ``prune`` work on: a local folder, or the cluster's base path."""
    if target == "local":
        return LocalStore(local_base(None, base))
    if target == "ssh":
        from pixi_deploy.store.remote import RemoteStore

        return RemoteStore(transport or _transport(), str(base) if base else None)
    raise _unknown_target(target)


def list_deployments(
    target: str = "local", base: PathLike | None = None, *, transport: Transport | None = None
) -> tuple[list[DeploymentMetadata], dict[str, str]]:
    """The store's deployments (newest first) and its names (name -> environment key)."""
    store = open_store(target, base, transport=transport)
    return store.deployments(), store.names()


def prune(
    keep: int,
    target: str = "local",
    base: PathLike | None = None,
    *,
    keep_code: int | None = None,
    transport: Transport | None = None,
) -> list[str]:
    """Remove all but the ``keep`` newest deployments (never named ones, nor any in use), and
    on a cluster all but the ``keep_code`` (default ``keep``) most recently used code snapshots
    (never one a running job uses); returns the removed paths."""
    for value, option in ((keep, "--keep"), (keep_code, "--keep-code")):
        if value is not None and value < 0:
            raise ConfigError(f"{option} {value} is negative", "pass how many to keep, 0 or more")
    removed = open_store(target, base, transport=transport).prune(keep)
    code = _code_store(target, base, transport)
    if code is not None:
        removed += code.prune(keep if keep_code is None else keep_code)
    return removed


def list_code_snapshots(
    target: str = "local", base: PathLike | None = None, *, transport: Transport | None = None
) -> list[dict[str, Any]]:
    """The code snapshots on a cluster (most recently used first); none in a local store."""
    code = _code_store(target, base, transport)
    return code.snapshots() if code is not None else []


def _code_store(
    target: str, base: PathLike | None, transport: Transport | None
) -> CodeStore | None:
    if target != "ssh":
        return None
    from pixi_deploy.code.remote import CodeStore
    from pixi_deploy.pack.fetch import default_cache_dir

    transport = transport or _transport()
    chosen = str(base) if base else transport.base_path
    if not chosen:
        raise ConfigError(
            "SLURM_DEPLOYMENT_BASE_PATH is not set", "set it, or pass --base with --target ssh"
        )
    return CodeStore(transport, chosen, cache_dir=default_cache_dir())


# ----------------------------------------------------------------------------------------------
# Slurm
# ----------------------------------------------------------------------------------------------


def environment_on_cluster(
    *,
    deployment: PathLike | None = None,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    build_sdists: bool = False,
    base: PathLike | None = None,
    reporter: Reporter | None = None,
    transport: Transport | None = None,
) -> str:
    """The path of the environment a job runs in: the one ``deployment`` names, or the
    workspace's, deployed now (a no-op round trip when it is there)."""
    return _metadata_on_cluster(
        deployment=deployment,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        base=base,
        reporter=reporter,
        transport=transport,
    ).deployment_path


def _metadata_on_cluster(
    *,
    deployment: PathLike | None,
    environment_path: str | None = None,
    needed: bool = True,
    **deploy_options: Any,
) -> DeploymentMetadata:
    """The deployment a job runs in: the metadata file ``deployment`` names, the environment at
    ``environment_path`` on the cluster (its metadata read only when ``needed``: a task or code
    snapshot must know its platform), or the workspace's, deployed now."""
    if environment_path is not None:
        if not needed:
            return DeploymentMetadata.at(environment_path)
        from pixi_deploy.transport import RemoteFileNotFoundError

        transport = deploy_options.get("transport") or _transport()
        path = environment_path.rstrip("/")
        try:
            text = transport.read_bytes(f"{path}/deployment_metadata.json")
        except RemoteFileNotFoundError:  # an image's mountpoint: its metadata is beside it
            head, _, key = path.rpartition("/envs/")
            if not head:
                raise
            text = transport.read_bytes(f"{head}/images/{key}.json")
        return DeploymentMetadata.from_json(text.decode(), f"{environment_path} on the cluster")
    if deployment is not None:
        return DeploymentMetadata.read(Path(deployment))
    return deploy(target="ssh", **deploy_options)


def submit(
    command: Sequence[str] = (),
    *,
    resources: JobResources | None = None,
    job_name: str = "pixi-deploy",
    array: str | None = None,
    dependency: str | None = None,
    after: Sequence[Job | str] = (),
    files: Mapping[str, bytes] | None = None,
    env: Mapping[str, str] | None = None,
    environment_path: str | None = None,
    deployment: PathLike | None = None,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    build_sdists: bool = False,
    code: bool = True,
    workdir: str | None = None,
    task: str | None = None,
    reporter: Reporter | None = None,
    transport: Transport | None = None,
) -> Job:
    """Run ``command`` as a Slurm job in the deployed environment (deployed first when
    needed); returns the :class:`~pixi_deploy.slurm.Job` to wait on, follow or cancel.

    The job starts in its own working copy of the workspace's code snapshot (``code=False``:
    in its run folder, without code), at ``workdir`` inside it. With ``task``, it runs that task
    of the manifest, ``command`` being the task's arguments.

    ``dependency`` is Slurm's ``--dependency`` (``afterok:12:13``...); ``after=[job, ...]``
    adds ``afterok`` on those jobs, so pipelines run in order (a job whose dependency can
    never be met ends as CANCELLED, reason DependencyNeverSatisfied, rather than pending
    forever). ``files`` land in the job's run folder; ``environment_path`` names an
    environment already on the cluster (from an earlier deploy) and skips the deploy check."""
    from pixi_deploy.slurm.spec import JobResources, JobSpec

    def connect() -> tuple[Transport, str]:
        client = slurm_client(transport)
        return client.transport, client.base

    shipped = _ship_to_cluster(
        command,
        connect=connect,
        environment_path=environment_path,
        deployment=deployment,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        code=code,
        workdir=workdir,
        task=task,
        reporter=reporter or NullReporter(),
    )
    checkout = shipped.checkout
    spec = JobSpec(
        command=shipped.argv,
        environment_path=shipped.metadata.deployment_path,
        name=job_name,
        resources=resources or JobResources(),
        array=array,
        code=checkout,
        workdir=workdir if checkout is None else None,
        dependency=_dependency(dependency, after),
        files=dict(files or {}),
        env=dict(env or {}),
    )
    return shipped.shipping.submit(slurm_client(shipped.transport), spec)


def prepare_code(
    *,
    manifest_path: PathLike | None = None,
    pre_deployed: bool = False,
    payload: PathLike | None = None,
    extra_files: Sequence[PathLike] = (),
    task: str | None = None,
    task_args: Sequence[str] = (),
    environment: str | None = None,
    platform: str | None = None,
    cache_dir: PathLike | None = None,
    reporter: Reporter | None = None,
) -> CodeShipping:
    """A run's code as :func:`submit` ships it, for callers that start the run themselves
    (Dagster's jobs and session steps): the workspace's snapshot with ``payload`` and
    ``extra_files`` in it, the task planned, all checked before anything goes over the
    network. ``pre_deployed``: the environment is not the workspace's own deploy (the
    workspace is then optional). Then ``send()``, ``command()`` and ``resending()``."""
    from pixi_deploy.project import CodeShipping

    return CodeShipping.start(
        manifest_path,
        "pre-deployed" if pre_deployed else None,
        True,
        None,
        task,
        task_args,
        environment,
        platform,
        cache_dir,
        reporter or NullReporter(),
        payload=Path(payload) if payload is not None else None,
        extra_files=tuple(extra_files),
    )


def metadata_on_cluster(
    environment_path: str, transport: Transport | None = None
) -> DeploymentMetadata:
    """The deployment metadata of an environment already on the cluster (one round trip)."""
    return _metadata_on_cluster(
        deployment=None, environment_path=environment_path, transport=transport
    )


def task_command(
    task: str,
    task_args: Sequence[str] = (),
    *,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
) -> tuple[list[str], Path, dict[str, str]]:
    """(argv, cwd, variables) that run ``task`` here, in the workspace, in whatever
    environment the caller is in (Dagster's local mode: no deploy, as its payloads run
    with the local Python)."""
    from pixi_deploy import project
    from pixi_deploy.workspace import current_platform

    workspace = load_workspace(Path(manifest_path) if manifest_path else None)
    name = project.task_environment(workspace, task, environment, platform)
    argv, _, env = project.local_command(
        workspace, task_args, task, name, platform or current_platform()
    )
    return argv, workspace.root, env


@dataclass(frozen=True)
class _Shipped:
    shipping: CodeShipping
    metadata: DeploymentMetadata
    argv: list[str]
    checkout: CodeCheckout | None
    transport: Transport
    base: str


def _ship_to_cluster(
    command: Sequence[str],
    *,
    connect: Callable[[], tuple[Transport, str]],
    environment_path: str | None,
    deployment: PathLike | None,
    manifest_path: PathLike | None,
    environment: str | None,
    platform: str | None,
    cache_dir: PathLike | None,
    inject: Sequence[PathLike],
    build_sdists: bool,
    code: bool,
    workdir: str | None,
    task: str | None,
    reporter: Reporter,
) -> _Shipped:
    """What a job and a login-node run share: every check that needs no network first (options,
    task plan, snapshot), then the connection (``connect()``: the transport and the base
    path of runs and snapshots), the environment (deployed when needed), the argv, the code."""
    from pixi_deploy.project import CodeShipping

    shipping = CodeShipping.start(
        manifest_path,
        deployment if environment_path is None else environment_path,
        code,
        workdir,
        task,
        command,
        environment,
        platform,
        cache_dir,
        reporter,
    )
    connection, root = connect()
    metadata = _metadata_on_cluster(
        environment_path=environment_path,
        needed=shipping.snapshot is not None or shipping.task is not None,
        deployment=deployment,
        manifest_path=manifest_path,
        environment=shipping.environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        base=root,
        reporter=reporter,
        transport=connection,
    )
    argv = shipping.command(command, metadata)
    checkout = shipping.send(connection, root, metadata)
    return _Shipped(shipping, metadata, argv, checkout, connection, root)


def _dependency(dependency: str | None, after: Sequence[Job | str]) -> str | None:
    from pixi_deploy.slurm.spec import check_dependency, dependency_on

    parts = [check_dependency(dependency)] if dependency else []
    if after:
        parts.append(dependency_on(list(after)))
    if any("?" in part for part in parts) and len(parts) > 1:
        raise ConfigError(
            "`after` cannot be combined with a dependency joined by `?` (any of)",
            "write the whole dependency in `dependency`",
        )
    return ",".join(parts) or None


_CLIENTS: weakref.WeakKeyDictionary[Transport, dict[str, Any]] = weakref.WeakKeyDictionary()
_CLIENTS_LOCK = threading.Lock()


def slurm_client(transport: Transport | None = None) -> Any:
    """The :class:`~pixi_deploy.slurm.SlurmClient` for the cluster, its runs under the base
    path: one per connection and base, so that every job a process follows shares one
    squeue poller (a thousand waiting jobs cost one squeue per interval, not a thousand)."""
    from pixi_deploy.slurm.client import SlurmClient

    transport = transport or _transport()
    base = transport.base_path
    if not base:
        raise ConfigError(
            "SLURM_DEPLOYMENT_BASE_PATH is not set",
            "set it to a folder on the cluster, e.g. ~/pixi-deploy",
        )
    with _CLIENTS_LOCK:
        clients = _CLIENTS.setdefault(transport, {})
        if base not in clients:
            clients[base] = SlurmClient(transport, base)
        return clients[base]


# ----------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------


def image(
    options: ImageOptions,
    *,
    pack_file: PathLike | None = None,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    inject: Sequence[PathLike] = (),
    build_sdists: bool = False,
    reporter: Reporter | None = None,
) -> ImageResult:
    """Build an OCI image of the environment (from the workspace, or from ``pack_file``)."""
    from dataclasses import replace

    from pixi_deploy.containers.image import build_image, build_image_from_pack

    if pack_file is not None:
        return build_image_from_pack(Path(pack_file), options, platform=platform, reporter=reporter)
    cache_dir = options.cache.root if options.cache is not None else None
    request = EnvironmentRequest(
        manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
    )
    preparation = Preparation(request, reporter)
    resolved = preparation.resolve()
    return build_image(
        resolved, replace(options, cache=preparation.cache), reporter=preparation.reporter
    )


# ----------------------------------------------------------------------------------------------


def _transport() -> Transport:
    from pixi_deploy.transport import get_transport

    return get_transport()


def _unknown_target(target: str) -> ConfigError:
    return ConfigError(f"unknown target '{target}'", "use --target local or --target ssh")
