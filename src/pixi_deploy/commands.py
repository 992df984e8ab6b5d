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

from pixi_deploy import api
from pixi_deploy.cli_options import (
    BuildSdistsOpt,
    CacheDirOpt,
    EnvironmentOpt,
    InjectOpt,
    JsonOpt,
    ManifestPath,
    PlatformOpt,
    stderr,
    stdout,
)
from pixi_deploy.render import RichReporter

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


def _reporter(json_: bool) -> RichReporter:
    return RichReporter(stderr, quiet=json_)


def _emit(json_: bool, data: dict[str, Any], human: str) -> None:
    if json_:
        stdout.print_json(json.dumps(data))
    else:
        stdout.print(human, markup=False)


def inspect(manifest_path: ManifestPath = None, json_: JsonOpt = False) -> None:
    """Show the workspace's environments, platforms, package counts and lock hashes."""
    description = api.inspect(manifest_path)
    if json_:
        stdout.print_json(json.dumps(description))
        return
    table = Table(title=f"{description['workspace']} ({description['manifest_path']})")
    for column in ("environment", "platform", "conda", "pypi", "source", "hash"):
        table.add_column(column)
    for env_name, entry in description["environments"].items():
        if not entry["platforms"]:
            table.add_row(env_name, "(no packages locked)", "0", "0", "0", "")
        for platform, summary in entry["platforms"].items():
            table.add_row(
                env_name,
                platform,
                str(summary["conda_packages"]),
                str(summary["pypi_packages"]),
                str(len(summary.get("source_packages", []))),
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
    result = api.pack(
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        output=output,
        compress=compress,
        self_extracting=self_extracting,
        cache_dir=cache_dir,
        inject=inject or (),
        build_sdists=build_sdists,
        reporter=_reporter(json_),
    )
    resolved = result.resolved
    data: dict[str, Any] = {
        "pack": str(result.path),
        "size": result.size,
        "environment": resolved.name,
        "platform": resolved.platform,
        "lock_hash": resolved.lock_hash,
        "digest": result.digest,
    }
    if result.self_extracting:
        data["self_extracting"] = True
        human = (
            f"{result.path} ({result.size / 1e6:.1f} MB); install with: sh {result.path.name} "
            f"[--target DIR]\ndigest: {result.digest} (check it: sha256sum {result.path.name})"
        )
    else:
        data["files"] = result.files
        human = (
            f"{result.path} ({result.size / 1e6:.1f} MB, {result.files} packages)\ndigest: "
            f"{result.digest} (pin it: pixi-deploy unpack --expect-digest {result.digest})"
        )
    _emit(json_, data, human)


def unpack_command(
    pack_file: Annotated[
        str,
        typer.Argument(
            help="A pack written by `pixi-deploy pack`: a file, - (standard input), or an "
            "https://, http:// or file:// URL (streams are read once: no room for the pack needed)"
        ),
    ],
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
    result = api.unpack(
        pack_file, directory, expect_digest=expect_digest, reporter=_reporter(json_)
    )
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
    metadata = api.pack_info(pack_file)
    data = {
        "digest": api.pack_digest(pack_file),
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
    format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="'directory' (default) or 'squashfs': one image BASE/images/<hash>.sqfs that "
            "jobs mount at the environment's path (squashfuse, or apptainer)",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Deploy an environment to a content-addressed store; reuse it when already there."""
    metadata = api.deploy(
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        target=target,
        base=base,
        name=name,
        cache_dir=cache_dir,
        inject=inject or (),
        build_sdists=build_sdists,
        reporter=_reporter(json_),
        format=format,
    )
    metadata.write(metadata_out)
    verb = "reused" if metadata.reused else "deployed"
    _emit(
        json_,
        {**json.loads(metadata.to_json()), "metadata_file": str(metadata_out)},
        f"{verb} {metadata.environment} ({metadata.platform}) at {metadata.deployment_path}"
        + (f" (image {metadata.image})" if metadata.image else ""),
    )


def run(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="The command to run, or with --task the task's arguments (after --)"),
    ] = None,
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
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="Run this task of the manifest, as `pixi run NAME` would (in the workspace)",
        ),
    ] = None,
    code: Annotated[
        bool,
        typer.Option(
            "--code/--no-code",
            help="With --target ssh: ship the workspace's files and run in a working copy of "
            "them (as submit does)",
        ),
    ] = True,
    workdir: Annotated[
        str | None,
        typer.Option(
            "--workdir",
            help="With --target ssh: folder of the code snapshot to start in (with --no-code, "
            "an absolute folder on the cluster)",
        ),
    ] = None,
    inject: InjectOpt = None,
    build_sdists: BuildSdistsOpt = False,
) -> None:
    """Run a command (or a task of the manifest) inside a deployed environment, deploying it
    first if needed; exits with its code. With --target ssh it runs on the cluster's login
    node, output streamed, Ctrl-C stopping it there (for real work use `submit`)."""
    status = api.run(
        command or [],
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        base=base,
        deployment=deployment,
        cache_dir=cache_dir,
        inject=inject or (),
        build_sdists=build_sdists,
        task=task,
        target=target,
        code=code,
        workdir=workdir,
        reporter=_reporter(target == "local"),
    )
    raise typer.Exit(status)


def list_command(
    target: TargetOpt = "local",
    base: BaseOpt = None,
    json_: JsonOpt = False,
) -> None:
    """List the environments deployed in a store, newest first (and, on a cluster, its code
    snapshots, most recently used first)."""
    deployments, names = api.list_deployments(target, base)
    snapshots = api.list_code_snapshots(target, base)
    if json_:
        stdout.print_json(
            json.dumps(
                {
                    "deployments": [json.loads(d.to_json()) for d in deployments],
                    "names": names,
                    "code_snapshots": snapshots,
                }
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
    if snapshots:
        code_table = Table(title="code snapshots")
        for column in ("hash", "files", "MB", "created", "git commit", "path"):
            code_table.add_column(column)
        for snap in snapshots:
            commit = str(snap.get("git_commit") or "")[:12] + ("*" if snap.get("git_dirty") else "")
            code_table.add_row(
                str(snap.get("hash")),
                str(snap.get("files")),
                f"{int(snap.get('bytes') or 0) / 1e6:.1f}",
                str(snap.get("created")),
                commit,
                str(snap.get("path")),
            )
        stdout.print(code_table)


def prune(
    keep: Annotated[
        int, typer.Option("--keep", min=0, help="How many of the newest environments to keep")
    ],
    target: TargetOpt = "local",
    base: BaseOpt = None,
    keep_code: Annotated[
        int | None,
        typer.Option(
            "--keep-code",
            min=0,
            help="How many of the most recently used code snapshots to keep (default: --keep)",
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Remove old environments and code snapshots; never named environments, nor anything a
    running job is using."""
    removed = api.prune(keep, target, base, keep_code=keep_code)
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
