"""`pixi-deploy dockerfile`, `apptainer` and `ci github|gitlab`: thin wrappers over the library."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from pixi_deploy import api
from pixi_deploy.cli_options import (
    EnvironmentOpt,
    JsonOpt,
    ManifestPath,
    PlatformOpt,
    stderr,
    stdout,
)
from pixi_deploy.containers.apptainer import write_apptainer
from pixi_deploy.containers.ci import CIOptions, write_github_workflows, write_gitlab_ci
from pixi_deploy.containers.common import (
    DEFAULT_PIXI_VERSION,
    ContainerOptions,
    parse_cmd,
    parse_port,
    plan_image,
)
from pixi_deploy.containers.dockerfile import write_dockerfile
from pixi_deploy.containers.image import (
    BASE_VARIABLE,
    DEFAULT_BASE,
    OUTPUTS,
    ImageOptions,
    ImageResult,
)
from pixi_deploy.pack import DownloadCache
from pixi_deploy.render import RichReporter
from pixi_deploy.workspace import Workspace, load_workspace

CudaOpt = Annotated[
    str | None,
    typer.Option("--cuda", help="Build for this CUDA version (12, 12.4): sets CONDA_OVERRIDE_CUDA"),
]
SrcOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--src",
        help="Folder/file of the workspace copied into the image (repeatable) [default: src/]",
    ),
]
PixiVersionOpt = Annotated[
    str, typer.Option("--pixi-version", help="Version of the ghcr.io/prefix-dev/pixi build image")
]
BaseImageOpt = Annotated[
    str | None,
    typer.Option(
        "--base-image",
        help="Runtime base image [default: ubuntu:24.04, or nvidia/cuda:...-base with --cuda]",
    ),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option("--output-dir", help="Where to write [default: the workspace root]"),
]
SpecOpt = Annotated[
    str,
    typer.Option(
        "--pixi-deploy-spec",
        help="What the deploy job pip-installs (a version pin, a git URL, ...)",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite files that already exist")]


def _options(
    cuda: str | None,
    src: list[str] | None,
    pixi_version: str,
    base_image: str | None,
    output_dir: Path | None,
    force: bool,
    port: str | None = None,
    cmd: str | None = None,
) -> ContainerOptions:
    return ContainerOptions(
        cuda=cuda,
        port=parse_port(port),
        src=tuple(src) if src else None,
        pixi_version=pixi_version,
        base_image=base_image,
        cmd=parse_cmd(cmd),
        output_dir=output_dir,
        force=force,
    )


def _report(
    workspace: Workspace,
    environment: str | None,
    options: ContainerOptions,
    write: Callable[[], list[Path]],
    json_: bool,
) -> None:
    plan = plan_image(workspace, environment, options)  # validates before anything is written
    written = write()
    if json_:
        stdout.print_json(
            json.dumps(
                {
                    "written": [str(p) for p in written],
                    "environment": plan.environment,
                    "platforms": list(plan.platforms),
                    "lock_hash": plan.lock_hash,
                    "cuda": plan.cuda,
                    "notes": list(plan.notes),
                }
            )
        )
        return
    for path in written:
        stdout.print(f"wrote {path}")
    for note in plan.notes:
        stderr.print(f"[yellow]warning:[/] {note}")


def dockerfile(
    environment: EnvironmentOpt = None,
    cuda: CudaOpt = None,
    # a string, so that `--port http` is a one-line ContainerError like every other bad value
    port: Annotated[str | None, typer.Option("--port", help="Port to EXPOSE")] = None,
    src: SrcOpt = None,
    cmd: Annotated[
        str | None, typer.Option("--cmd", help="Default command, e.g. 'uvicorn app:app' [bash]")
    ] = None,
    pixi_version: PixiVersionOpt = DEFAULT_PIXI_VERSION,
    base_image: BaseImageOpt = None,
    manifest_path: ManifestPath = None,
    output_dir: OutputDirOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write a multi-stage Dockerfile (+ .dockerignore) that installs the locked environment."""
    options = _options(cuda, src, pixi_version, base_image, output_dir, force, port, cmd)
    workspace = load_workspace(manifest_path)
    _report(
        workspace,
        environment,
        options,
        lambda: write_dockerfile(workspace, environment, options),
        json_,
    )


def apptainer(
    environment: EnvironmentOpt = None,
    cuda: CudaOpt = None,
    src: SrcOpt = None,
    pixi_version: PixiVersionOpt = DEFAULT_PIXI_VERSION,
    base_image: BaseImageOpt = None,
    manifest_path: ManifestPath = None,
    output_dir: OutputDirOpt = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write an Apptainer definition file (pixi.def / <env>.def) for clusters without Docker.

    `apptainer build env.sif pixi.def` then gives a SIF (on a machine with Apptainer);
    `pixi-deploy image --output squashfs` gives a runnable squashfs without Apptainer on the
    build machine (`apptainer exec env.sqfs /app/entrypoint.sh CMD`, or `apptainer build
    env.sif env.sqfs` for a SIF of it).
    """
    options = _options(cuda, src, pixi_version, base_image, output_dir, force)
    workspace = load_workspace(manifest_path)
    _report(
        workspace,
        environment,
        options,
        lambda: write_apptainer(workspace, environment, options),
        json_,
    )


RegistryOpt = Annotated[
    str | None,
    typer.Option(
        "--registry",
        help="Registry the images are pushed to [default: ghcr.io / GitLab's $CI_REGISTRY]",
    ),
]
ImageOpt = Annotated[
    str | None,
    typer.Option("--image", help="Image name without registry [default: the repository path]"),
]
ApptainerOpt = Annotated[
    bool, typer.Option("--apptainer", help="Also build the .sif and push it as an ORAS artifact")
]
DeployOpt = Annotated[
    bool,
    typer.Option(
        "--deploy-cluster",
        help="Add a job that runs `pixi-deploy deploy --target ssh` on main/tags",
    ),
]


def _ci(
    which: str,
    environment: str | None,
    cuda: str | None,
    src: list[str] | None,
    registry: str | None,
    image: str | None,
    apptainer_: bool,
    deploy_cluster: bool,
    name: str | None,
    spec: str,
    manifest_path: Path | None,
    force: bool,
    json_: bool,
) -> None:
    container = _options(cuda, src, DEFAULT_PIXI_VERSION, None, None, force)
    options = CIOptions(
        container=container,
        registry=registry,
        image=image,
        apptainer=apptainer_,
        deploy_cluster=deploy_cluster,
        name=name,
        pixi_deploy_spec=spec,
    )
    workspace = load_workspace(manifest_path)
    writer = write_github_workflows if which == "github" else write_gitlab_ci
    _report(
        workspace, environment, container, lambda: writer(workspace, environment, options), json_
    )


def ci_github(
    environment: EnvironmentOpt = None,
    cuda: CudaOpt = None,
    src: SrcOpt = None,
    registry: RegistryOpt = None,
    image: ImageOpt = None,
    apptainer_: ApptainerOpt = False,
    deploy_cluster: DeployOpt = False,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Workflow file name [default: container / container-<env>]"),
    ] = None,
    spec: SpecOpt = "pixi-deploy",
    manifest_path: ManifestPath = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write .github/workflows/<name>.yml: build, smoke-test and push the image(s)."""
    _ci(
        "github",
        environment,
        cuda,
        src,
        registry,
        image,
        apptainer_,
        deploy_cluster,
        name,
        spec,
        manifest_path,
        force,
        json_,
    )


def ci_gitlab(
    environment: EnvironmentOpt = None,
    cuda: CudaOpt = None,
    src: SrcOpt = None,
    registry: RegistryOpt = None,
    image: ImageOpt = None,
    apptainer_: ApptainerOpt = False,
    deploy_cluster: DeployOpt = False,
    spec: SpecOpt = "pixi-deploy",
    manifest_path: ManifestPath = None,
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Write .gitlab-ci.yml: build, smoke-test and push the image(s) to the project registry."""
    _ci(
        "gitlab",
        environment,
        cuda,
        src,
        registry,
        image,
        apptainer_,
        deploy_cluster,
        None,
        spec,
        manifest_path,
        force,
        json_,
    )


def image(
    tag: Annotated[
        str, typer.Option("--tag", "-t", help="NAME:TAG; with --push NAME says where it goes")
    ],
    environment: EnvironmentOpt = None,
    platform: PlatformOpt = None,
    pack: Annotated[
        Path | None, typer.Option("--pack", help="Build from this pack file instead of the lock")
    ] = None,
    base: Annotated[
        str | None,
        typer.Option(
            "--base",
            help="A registry image, an OCI layout DIR[:TAG], an oci-archive FILE[:TAG], or "
            f"scratch (no libc: the environment cannot run) [default: {DEFAULT_BASE}, or "
            f"${BASE_VARIABLE}]",
        ),
    ] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            help=f"{' | '.join(OUTPUTS)} (squashfs: the image's root filesystem, which "
            "`apptainer exec FILE.sqfs /app/entrypoint.sh CMD` runs) [default: oci-dir unless "
            "--push]",
        ),
    ] = None,
    dest: Annotated[
        Path | None,
        typer.Option("--dest", help="Where to write [default: ./NAME-TAG-PLATFORM.oci/.tar/.sqfs]"),
    ] = None,
    push: Annotated[
        bool, typer.Option("--push", help="Push to the registry named by --tag")
    ] = False,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Environment path in the image [/app/.pixi/envs/ENV]"),
    ] = None,
    cmd: Annotated[
        str | None, typer.Option("--cmd", help="Default command (after activation)")
    ] = None,
    insecure_registry: Annotated[
        bool,
        typer.Option("--insecure-registry", help="Allow plain HTTP to a non-loopback registry"),
    ] = False,
    registry_user: Annotated[
        str | None,
        typer.Option(
            "--registry-user",
            help="Registry user; password from $PIXI_DEPLOY_REGISTRY_PASSWORD "
            "[default: ~/.docker/config.json]",
        ),
    ] = None,
    compression: Annotated[
        str, typer.Option("--compression", help="Layer compression: gzip | none")
    ] = "gzip",
    cache_dir: Annotated[
        Path | None,
        typer.Option("--cache-dir", help="Download + layer cache [default: ~/.cache/pixi-deploy]"),
    ] = None,
    manifest_path: ManifestPath = None,
    json_: JsonOpt = False,
) -> None:
    """Build an OCI image of the environment (one layer per package), no Docker needed."""
    options = ImageOptions(
        tag=tag,
        base=base,
        output=output,
        dest=dest,
        push=push,
        prefix=prefix,
        cmd=parse_cmd(cmd),
        insecure_registry=insecure_registry,
        registry_user=registry_user,
        compression=compression,
        cache=DownloadCache(cache_dir),
    )
    reporter = RichReporter(stderr, quiet=json_)
    result: ImageResult
    result = api.image(
        options,
        pack_file=pack,
        manifest_path=manifest_path,
        environment=environment,
        platform=platform,
        reporter=reporter,
    )
    if json_:
        for note in result.notes:  # stdout holds only the JSON
            stderr.print(f"[yellow]warning:[/] {note}")
        stdout.print_json(json.dumps(result.to_json()))
        return
    reused = sum(1 for layer in result.layers if layer.cached)
    stdout.print(
        f"built {result.reference} ({result.platform}, {result.architecture}): "
        f"{result.manifest_digest}, {result.base_layers} base + {len(result.layers)} layers "
        f"({reused} reused)",
        markup=False,
    )
    if result.output:
        stdout.print(f"wrote {result.output_kind} {result.output}", markup=False)
    if result.push:
        stdout.print(
            f"pushed {result.push.reference}: {len(result.push.uploaded)} blobs uploaded "
            f"({result.push.bytes_uploaded} bytes), {len(result.push.skipped)} already there",
            markup=False,
        )
    for note in result.notes:
        stderr.print(f"[yellow]warning:[/] {note}")


def register(app: typer.Typer) -> None:
    app.command("image")(image)
    app.command("dockerfile")(dockerfile)
    app.command("apptainer")(apptainer)
    ci_app = typer.Typer(
        name="ci",
        help="Write CI pipelines that build and publish the container images.",
        no_args_is_help=True,
    )
    ci_app.command("github")(ci_github)
    ci_app.command("gitlab")(ci_gitlab)
    app.add_typer(ci_app, name="ci")
