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
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pixi_deploy.channels import ChannelSettings
from pixi_deploy.errors import ConfigError
from pixi_deploy.pack import DownloadCache, PackMetadata, UnpackResult, read_metadata
from pixi_deploy.pack import unpack as unpack_pack
from pixi_deploy.pack.inject import prepare_environment
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.store import DeploymentMetadata, LocalStore, Store, run_in_environment
from pixi_deploy.workspace import ResolvedEnvironment, Workspace, load_workspace

if TYPE_CHECKING:
    from pixi_deploy.containers.image import ImageOptions, ImageResult
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
        return prepare_environment(
            resolved,
            self.cache,
            inject=[Path(p) for p in self.request.inject],
            build_sdists=self.request.build_sdists,
            reporter=self.reporter,
        )

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


# ----------------------------------------------------------------------------------------------
# Workspace and packs
# ----------------------------------------------------------------------------------------------


def inspect(manifest_path: PathLike | None = None) -> dict[str, Any]:
    """What ``inspect --json`` prints: environments, platforms, counts, hashes, problems."""
    return load_workspace(Path(manifest_path) if manifest_path else None).describe()


@dataclass(frozen=True)
class PackOutcome:
    path: Path
    size: int
    resolved: ResolvedEnvironment = field(repr=False)
    files: int | None = None  # archives in a pack (None for a self-extracting installer)
    self_extracting: bool = False


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
        return PackOutcome(installer.path, installer.size, resolved, None, True)
    from pixi_deploy.pack import write_pack

    written = write_pack(
        resolved,
        out,
        compression="zstd" if compress else "none",
        cache=preparation.cache,
        reporter=preparation.reporter,
    )
    return PackOutcome(written.path, written.size, resolved, len(written.metadata.files))


def unpack(
    pack_file: PathLike, directory: PathLike, *, reporter: Reporter | None = None
) -> UnpackResult:
    """Install a pack into ``directory`` (new or empty), offline, with its ``activate.sh``."""
    return unpack_pack(Path(pack_file), Path(directory), reporter=reporter)


def pack_info(pack_file: PathLike) -> PackMetadata:
    """What a pack holds, from its metadata alone."""
    return read_metadata(Path(pack_file))


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
) -> DeploymentMetadata:
    """Deploy an environment to a content-addressed store (``target`` "local" or "ssh"),
    reusing it when it is there; returns its deployment metadata.

    For ``ssh`` the cluster comes from ``transport`` (default: the process's connection from
    ``SLURM_EDGE_NODE_*``) and ``base`` defaults to ``SLURM_DEPLOYMENT_BASE_PATH``; the platform
    defaults to the edge node's."""
    request = EnvironmentRequest(
        manifest_path, environment, platform, cache_dir, tuple(inject), build_sdists
    )
    return deploy_prepared(
        Preparation(request, reporter), target=target, base=base, name=name, transport=transport
    )


def deploy_prepared(
    preparation: Preparation,
    *,
    target: str = "local",
    base: PathLike | None = None,
    name: str | None = None,
    transport: Transport | None = None,
) -> DeploymentMetadata:
    """:func:`deploy` for a caller that holds a :class:`Preparation` already."""
    reporter = preparation.reporter
    if target == "local":
        store = LocalStore(local_base(preparation.workspace, base), preparation.cache)
        return store.deploy(preparation.resolve(), name=name, reporter=reporter)
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
        )
    raise _unknown_target(target)


def run(
    command: Sequence[str],
    *,
    manifest_path: PathLike | None = None,
    environment: str | None = None,
    platform: str | None = None,
    base: PathLike | None = None,
    deployment: PathLike | None = None,
    cache_dir: PathLike | None = None,
    inject: Sequence[PathLike] = (),
    reporter: Reporter | None = None,
) -> int:
    """Run ``command`` in a local deployment (deployed first unless ``deployment`` names a
    deployment_metadata.json); returns its exit code."""
    if deployment is not None:
        metadata = DeploymentMetadata.read(Path(deployment))
        return run_in_environment(Path(metadata.deployment_path), command)
    request = EnvironmentRequest(manifest_path, environment, platform, cache_dir, tuple(inject))
    preparation = Preparation(request, reporter)
    store = LocalStore(local_base(preparation.workspace, base), preparation.cache)
    metadata = store.deploy(preparation.resolve(), reporter=preparation.reporter)
    return store.run(metadata, command)


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
    transport: Transport | None = None,
) -> list[str]:
    """Remove all but the ``keep`` newest deployments; never named ones, nor any in use."""
    if keep < 0:
        raise ConfigError(f"--keep {keep} is negative", "pass how many to keep, 0 or more")
    return open_store(target, base, transport=transport).prune(keep)


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
    if deployment is not None:
        return DeploymentMetadata.read(Path(deployment)).deployment_path
    metadata = deploy(
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        target="ssh",
        base=base,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        reporter=reporter,
        transport=transport,
    )
    return metadata.deployment_path


def submit(
    command: Sequence[str],
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
    reporter: Reporter | None = None,
    transport: Transport | None = None,
) -> Job:
    """Run ``command`` as a Slurm job in the deployed environment (deployed first when
    needed); returns the :class:`~pixi_deploy.slurm.Job` to wait on, follow or cancel.

    ``dependency`` is Slurm's ``--dependency`` (``afterok:12:13``...); ``after=[job, ...]``
    adds ``afterok`` on those jobs, so pipelines run in order (a job whose dependency can
    never be met ends as CANCELLED, reason DependencyNeverSatisfied, rather than pending
    forever). ``files`` land in the job's run folder; ``environment_path`` names an
    environment already on the cluster (from an earlier deploy) and skips the deploy check."""
    from pixi_deploy.slurm.spec import JobResources, JobSpec

    transport = transport or _transport()
    env_path = environment_path or environment_on_cluster(
        deployment=deployment,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        cache_dir=cache_dir,
        inject=inject,
        build_sdists=build_sdists,
        reporter=reporter,
        transport=transport,
    )
    spec = JobSpec(
        command=list(command),
        environment_path=env_path,
        name=job_name,
        resources=resources or JobResources(),
        array=array,
        dependency=_dependency(dependency, after),
        files=dict(files or {}),
        env=dict(env or {}),
    )
    return slurm_client(transport).submit(spec)


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
