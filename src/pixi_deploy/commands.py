"""Core commands: inspect, pack, unpack, deploy, run, list, prune. Each calls one library function.

Human output goes to stderr (steps, progress) and a short result to stdout; with ``--json`` stdout
carries exactly one JSON document, so scripts can rely on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pixi_deploy.channels import ChannelSettings
from pixi_deploy.cli import EnvironmentOpt, JsonOpt, ManifestPath, PlatformOpt, stderr, stdout
from pixi_deploy.errors import ConfigError
from pixi_deploy.pack import DownloadCache, pack_digest, read_metadata, unpack, write_pack
from pixi_deploy.pack.inject import prepare_environment
from pixi_deploy.render import RichReporter
from pixi_deploy.store import DeploymentMetadata, LocalStore, Store, run_in_environment
from pixi_deploy.workspace import ResolvedEnvironment, Workspace, load_workspace

CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Download cache for packages (default: $PIXI_DEPLOY_CACHE_DIR or ~/.cache/pixi-deploy)",
        show_default=False,
    ),
]
TargetOpt = Annotated[
    str,
    typer.Option(
        "--target", "-t", help="Where to deploy: 'local' (a folder here) or 'ssh' (a cluster)"
    ),
]
BaseOpt = Annotated[
    Path | None,
    typer.Option(
        "--base",
        help="Store root: a local folder (default: base in the manifest tool.pixi-deploy table, or $PIXI_DEPLOY_BASE); with --target ssh, the path on the cluster (default: $SLURM_DEPLOYMENT_BASE_PATH)",
        show_default=False,
    ),
]
MetadataOutOpt = Annotated[
    Path,
    typer.Option("--metadata-out", help="Where to write deployment_metadata.json"),
]
InjectOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--inject",
        help="Add a local .conda/.tar.bz2 package or wheel (repeatable); checked against the lock",
        show_default=False,
    ),
]
BuildSdistsOpt = Annotated[
    bool,
    typer.Option("--build-sdists", help="Build wheels here from source distributions in the lock"),
]


def _reporter(json_: bool) -> RichReporter:
    return RichReporter(stderr, quiet=json_)


def _emit(json_: bool, data: dict[str, Any], human: str) -> None:
    if json_:
        stdout.print_json(json.dumps(data))
    else:
        stdout.print(human, markup=False)


def inspect(manifest_path: ManifestPath = None, json_: JsonOpt = False) -> None:
    """Show the workspace's environments, platforms, package counts and lock hashes."""
    workspace = load_workspace(manifest_path)
    description = workspace.describe()
    if json_:
        stdout.print_json(json.dumps(description))
        return
    table = Table(title=f"{description['workspace']} ({workspace.manifest_path})")
    for column in ("environment", "platform", "conda", "pypi", "hash"):
        table.add_column(column)
    for env_name, entry in description["environments"].items():
        if not entry["platforms"]:
            table.add_row(env_name, "(no packages locked)", "0", "0", "")
        for platform, summary in entry["platforms"].items():
            table.add_row(
                env_name,
                platform,
                str(summary["conda_packages"]),
                str(summary["pypi_packages"]),
                summary["hash"][:16],
            )
    stdout.print(table)
    for problem in description["problems"]:
        stderr.print(f"warning: {problem}", markup=False, style="yellow")


def pack(
    manifest_path: ManifestPath = None,
    environment: EnvironmentOpt = None,
    platform: PlatformOpt = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Pack file (default: <workspace>-<env>-<platform>-<hash>.tar)"
        ),
    ] = None,
    compress: Annotated[
        bool, typer.Option("--compress/--no-compress", help="zstd-compress the pack (.tar.zst)")
    ] = False,
    cache_dir: CacheDirOpt = None,
    inject: InjectOpt = None,
    build_sdists: BuildSdistsOpt = False,
    self_extracting: Annotated[
        bool,
        typer.Option(
            "--self-extracting",
            help="Write one shell script that installs the environment with only sh, tar, dd, "
            "cksum and sed (no python, no pixi, no network)",
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Pack one environment for one platform into a single file that installs offline."""
    resolved = load_workspace(manifest_path).resolve(environment, platform)
    cache = DownloadCache(cache_dir)
    resolved = prepare_environment(
        resolved, cache, inject=inject or (), build_sdists=build_sdists, reporter=_reporter(json_)
    )
    if self_extracting:
        _pack_self_extracting(resolved, output, cache, json_)
        return
    result = write_pack(
        resolved,
        output,
        compression="zstd" if compress else "none",
        cache=cache,
        reporter=_reporter(json_),
    )
    data = {
        "pack": str(result.path),
        "size": result.size,
        "environment": resolved.name,
        "platform": resolved.platform,
        "lock_hash": resolved.lock_hash,
        "files": len(result.metadata.files),
        "digest": result.digest,
    }
    _emit(
        json_,
        data,
        f"{result.path} ({result.size / 1e6:.1f} MB, {len(result.metadata.files)} packages)"
        f"\ndigest: {result.digest} (pin it: pixi-deploy unpack --expect-digest {result.digest})",
    )


def _pack_self_extracting(
    resolved: ResolvedEnvironment, output: Path | None, cache: DownloadCache, json_: bool
) -> None:
    from pixi_deploy.pack.selfextract import write_self_extracting

    result = write_self_extracting(resolved, output, cache=cache, reporter=_reporter(json_))
    data = {
        "pack": str(result.path),
        "size": result.size,
        "self_extracting": True,
        "environment": resolved.name,
        "platform": resolved.platform,
        "lock_hash": resolved.lock_hash,
        "digest": result.digest,
    }
    _emit(
        json_,
        data,
        f"{result.path} ({result.size / 1e6:.1f} MB); install with: sh {result.path.name} "
        f"[--target DIR]\ndigest: {result.digest} (check it: sha256sum {result.path.name})",
    )


def unpack_command(
    pack_file: Annotated[Path, typer.Argument(help="A pack written by `pixi-deploy pack`")],
    directory: Annotated[
        Path, typer.Argument(help="Where to install (must not exist, or be empty)")
    ],
    expect_digest: Annotated[
        str | None,
        typer.Option(
            "--expect-digest",
            help="Refuse the pack unless its digest (printed by `pack` and `pack-info`) is this",
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Install a pack into DIRECTORY, offline, and write DIRECTORY/activate.sh."""
    result = unpack(pack_file, directory, reporter=_reporter(json_), expect_digest=expect_digest)
    data = {
        "prefix": str(result.prefix),
        "activate_script": str(result.activate_script),
        "environment": result.metadata.environment,
        "platform": result.metadata.platform,
        "lock_hash": result.metadata.lock_hash,
        "digest": result.digest,
    }
    _emit(json_, data, f"unpacked into {result.prefix}; activate with: . {result.activate_script}")


def pack_info(
    pack_file: Annotated[Path, typer.Argument(help="A pack written by `pixi-deploy pack`")],
    json_: JsonOpt = False,
) -> None:
    """Show what a pack holds (reads only its metadata) and its digest."""
    metadata = read_metadata(pack_file)
    data = {
        "digest": pack_digest(pack_file),
        "environment": metadata.environment,
        "platform": metadata.platform,
        "lock_hash": metadata.lock_hash,
        "tool_version": metadata.tool_version,
        "format_version": metadata.format_version,
        "virtual_packages": metadata.virtual_packages,
        "files": len(metadata.files),
        "payload_bytes": metadata.payload_bytes,
    }
    _emit(json_, data, "\n".join(f"{k}: {v}" for k, v in data.items()))


def _local_base(workspace: Workspace | None, base: Path | None) -> Path:
    import os

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
    manifest_path: ManifestPath = None,
    environment: EnvironmentOpt = None,
    platform: PlatformOpt = None,
    target: TargetOpt = "local",
    base: BaseOpt = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Also publish as a named deployment, e.g. proj/v2024.02"),
    ] = None,
    metadata_out: MetadataOutOpt = Path("deployment_metadata.json"),
    cache_dir: CacheDirOpt = None,
    inject: InjectOpt = None,
    build_sdists: BuildSdistsOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Deploy an environment to a content-addressed store; reuse it when already there."""
    workspace = load_workspace(manifest_path)
    cache = DownloadCache(cache_dir)
    cache.channels = ChannelSettings.load(workspace.root)  # pixi's mirrors and credentials

    def prepare(resolved: ResolvedEnvironment) -> ResolvedEnvironment:
        return prepare_environment(
            resolved,
            cache,
            inject=inject or (),
            build_sdists=build_sdists,
            reporter=_reporter(json_),
        )

    if target == "local":
        store = LocalStore(_local_base(workspace, base), cache)
        metadata = store.deploy(
            prepare(workspace.resolve(environment, platform)), name=name, reporter=_reporter(json_)
        )
    elif target == "ssh":
        from pixi_deploy.store.remote import deploy_ssh

        needs_prepare = bool(
            inject or build_sdists or _has_path_dependencies(workspace, environment)
        )
        metadata = deploy_ssh(
            workspace,
            environment,
            platform,
            name=name,
            cache=cache,
            reporter=_reporter(json_),
            prepare=prepare if needs_prepare else None,
            base=str(base) if base else None,
        )
    else:
        raise ConfigError(f"unknown target '{target}'", "use --target local or --target ssh")
    metadata.write(metadata_out)
    verb = "reused" if metadata.reused else "deployed"
    _emit(
        json_,
        {**json.loads(metadata.to_json()), "metadata_file": str(metadata_out)},
        f"{verb} {metadata.environment} ({metadata.platform}) at {metadata.deployment_path}",
    )


def _has_path_dependencies(workspace: Workspace, environment: str | None) -> bool:
    env = workspace.lock.environment(
        environment or workspace.config.get("environment") or "default"
    )
    if env is None:
        return False
    return any(
        "://" not in str(p.location) or str(p.location).startswith("file://")
        for platform in env.platforms()
        for p in env.pypi_packages_for_platform(platform) or []
    )


def run(
    command: Annotated[list[str], typer.Argument(help="The command to run, after --")],
    manifest_path: ManifestPath = None,
    environment: EnvironmentOpt = None,
    platform: PlatformOpt = None,
    target: TargetOpt = "local",
    base: BaseOpt = None,
    deployment: Annotated[
        Path | None,
        typer.Option(
            "--deployment", help="Run in the environment a deployment_metadata.json names"
        ),
    ] = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Run a command inside a deployed environment (deploying it first if needed); exits with its code."""
    if target != "local":
        raise ConfigError(
            f"`run` runs on the local target, not '{target}'", "use `pixi-deploy submit` for Slurm"
        )
    if deployment is not None:
        metadata = DeploymentMetadata.read(deployment)
        code = run_in_environment(Path(metadata.deployment_path), command)
    else:
        workspace = load_workspace(manifest_path)
        cache = DownloadCache(cache_dir)
        resolved = prepare_environment(workspace.resolve(environment, platform), cache)
        store = LocalStore(_local_base(workspace, base), cache)
        metadata = store.deploy(resolved, reporter=_reporter(True))
        code = store.run(metadata, command)
    raise typer.Exit(code)


def _open_store(target: str, base: Path | None) -> Store:
    """The store `list` and `prune` work on: a local folder, or the cluster's base path."""
    if target == "local":
        return LocalStore(_local_base(None, base))
    if target == "ssh":
        from pixi_deploy.store.remote import RemoteStore
        from pixi_deploy.transport import get_transport

        return RemoteStore(get_transport(), str(base) if base else None)
    raise ConfigError(f"unknown target '{target}'", "use --target local or --target ssh")


def list_command(
    target: TargetOpt = "local",
    base: BaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List the environments deployed in a store, newest first."""
    store = _open_store(target, base)
    deployments = store.deployments()
    names = store.names()
    if json_:
        stdout.print_json(
            json.dumps(
                {"deployments": [json.loads(d.to_json()) for d in deployments], "names": names}
            )
        )
        return
    table = Table()
    for column in ("hash", "environment", "platform", "created", "names", "path"):
        table.add_column(column)
    for item in deployments:
        key = Path(item.deployment_path).name
        table.add_row(
            key,
            item.environment,
            item.platform,
            item.created,
            ", ".join(n for n, k in names.items() if k == key),
            item.deployment_path,
        )
    stdout.print(table)


def prune(
    keep: Annotated[
        int, typer.Option("--keep", min=0, help="How many of the newest environments to keep")
    ],
    target: TargetOpt = "local",
    base: BaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Remove old environments; never named ones, nor any a running job is using."""
    removed = _open_store(target, base).prune(keep)
    _emit(
        json_,
        {"removed": removed},
        "\n".join(f"removed {p}" for p in removed) or "nothing to remove",
    )


def demo(json_: JsonOpt = False) -> None:
    """Build the bundled example workspace and channel, deploy it locally, run a command in it."""
    from pixi_deploy.demo import run_demo

    summary = run_demo(reporter=RichReporter(stdout, quiet=json_))
    if json_:
        stdout.print_json(json.dumps(summary))
    if summary["exit_code"] != 0:
        raise typer.Exit(summary["exit_code"])


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
    app.command("pack")(pack)
    app.command("unpack")(unpack_command)
    app.command("pack-info")(pack_info)
    app.command("deploy")(deploy)
    app.command("run", context_settings={"allow_interspersed_args": False})(run)
    app.command("list")(list_command)
    app.command("prune")(prune)
    app.command("demo")(demo)
