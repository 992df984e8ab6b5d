"""What every container generator needs: options, the image plan of one environment, safe writes.

An :class:`ImagePlan` is computed once from the workspace and the options (which environment,
which Linux platforms the lock has for it, their lock hashes, which source folders go into the
image, the CUDA override) and the Dockerfile, Apptainer and CI generators only render it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pixi_deploy.errors import ContainerError
from pixi_deploy.workspace import DEFAULT_ENVIRONMENT, LOCK_NAME, Workspace

# The pixi image of the build stage (https://github.com/prefix-dev/pixi-docker); the version pixi's
# own deployment docs use. It must be at least the pixi that wrote pixi.lock.
DEFAULT_PIXI_VERSION = "0.72.0"
PIXI_IMAGE = "ghcr.io/prefix-dev/pixi"
DEFAULT_BASE_IMAGE = "ubuntu:24.04"
# CUDA major -> runtime base image (the bases pixi-docker builds its CUDA tags on).
CUDA_BASE_IMAGES = {
    "11": "nvidia/cuda:11.8.0-base-ubuntu22.04",
    "12": "nvidia/cuda:12.9.1-base-ubuntu24.04",
    "13": "nvidia/cuda:13.0.0-base-ubuntu24.04",
}
APP_DIR = "/app"
# conda platform -> OCI platform; only those the pixi image is published for.
OCI_PLATFORMS = {"linux-64": "linux/amd64", "linux-aarch64": "linux/arm64"}

_CUDA_RE = re.compile(r"^\d{1,2}(\.\d{1,2})?$")
_ENV_NAME_RE = re.compile(r"^[a-z0-9-]+$")
_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")


@dataclass(frozen=True)
class ContainerOptions:
    """Choices shared by ``dockerfile``, ``apptainer`` and ``ci``; all optional."""

    cuda: str | None = None
    """CUDA version the image is built for (``12`` or ``12.4``): sets CONDA_OVERRIDE_CUDA."""
    port: int | None = None
    src: tuple[str, ...] | None = None
    """Folders/files (relative to the workspace root) copied into the image; None = ``src`` if
    the workspace has one."""
    pixi_version: str = DEFAULT_PIXI_VERSION
    base_image: str | None = None
    """Runtime base image; default ubuntu:24.04, or the CUDA base image with ``cuda``."""
    cmd: tuple[str, ...] | None = None
    """Default command of the image (the entrypoint activates the environment first)."""
    output_dir: Path | None = None
    """Where to write; default the workspace root (the build context)."""
    force: bool = False


@dataclass(frozen=True)
class ImagePlan:
    """Everything the generators render, derived from one workspace environment."""

    workspace: Workspace
    environment: str
    platforms: tuple[str, ...]
    """Locked Linux platforms of the environment that images can be built for."""
    lock_hashes: dict[str, str]
    manifest_name: str
    sources: tuple[str, ...]
    has_path_dependencies: bool
    needs_cuda: bool
    options: ContainerOptions
    notes: tuple[str, ...] = field(default=())

    @property
    def cuda(self) -> str | None:
        return self.options.cuda

    @property
    def primary_platform(self) -> str:
        return self.platforms[0]

    @property
    def lock_hash(self) -> str:
        return self.lock_hashes[self.primary_platform]

    @property
    def oci_platforms(self) -> tuple[str, ...]:
        return tuple(OCI_PLATFORMS[p] for p in self.platforms if p in OCI_PLATFORMS)

    @property
    def pixi_image(self) -> str:
        return f"{PIXI_IMAGE}:{self.options.pixi_version}"

    @property
    def base_image(self) -> str:
        if self.options.base_image:
            return self.options.base_image
        if self.cuda:
            return CUDA_BASE_IMAGES.get(self.cuda.split(".")[0], CUDA_BASE_IMAGES["12"])
        return DEFAULT_BASE_IMAGE

    @property
    def env_prefix(self) -> str:
        return f"{APP_DIR}/.pixi/envs/{self.environment}"

    @property
    def cuda_tag(self) -> str | None:
        """Tag suffix of CUDA images, e.g. ``cuda12``."""
        return f"cuda{self.cuda.replace('.', '')}" if self.cuda else None

    @property
    def output_dir(self) -> Path:
        return (self.options.output_dir or self.workspace.root).resolve()

    @property
    def workspace_name(self) -> str:
        return self.workspace.name

    def labels(self) -> dict[str, str]:
        """OCI annotations plus the lock hash of every platform the image is built for."""
        labels = {
            "org.opencontainers.image.title": self.workspace_name,
            "org.opencontainers.image.description": (
                f"pixi environment '{self.environment}' of {self.workspace_name}, "
                f"installed from pixi.lock"
            ),
            "org.pixi-deploy.environment": self.environment,
            "org.pixi-deploy.lock-hash": self.lock_hash,
        }
        for platform in self.platforms:
            labels[f"org.pixi-deploy.lock-hash.{platform}"] = self.lock_hashes[platform]
        if self.cuda:
            labels["org.pixi-deploy.cuda"] = self.cuda
        return labels

    def smoke_command(self) -> list[str]:
        """A command that succeeds inside the image only when the environment is activated."""
        check = (
            f'test "$CONDA_PREFIX" = "{self.env_prefix}" '
            f'&& test -d "$CONDA_PREFIX/conda-meta" '
            f'&& echo "pixi environment {self.environment} is active: $CONDA_PREFIX"'
        )
        return ["bash", "-c", check]

    def cmd(self) -> list[str]:
        return list(self.options.cmd) if self.options.cmd else ["bash"]


def validate_options(options: ContainerOptions) -> None:
    """Reject values that would write a broken file; one-line errors that say what to pass."""
    if options.cuda is not None and not _CUDA_RE.match(options.cuda):
        raise ContainerError(
            f"--cuda {options.cuda!r} is not a CUDA version", "use a version such as 12 or 12.4"
        )
    if options.port is not None and not 1 <= options.port <= 65535:
        raise ContainerError(f"--port {options.port} is out of range", "use a port from 1 to 65535")
    if not _VERSION_RE.match(options.pixi_version):
        raise ContainerError(
            f"--pixi-version {options.pixi_version!r} is not a pixi release",
            "use a version such as 0.72.0",
        )
    if options.base_image is not None and not _IMAGE_RE.match(options.base_image):
        raise ContainerError(
            f"--base-image {options.base_image!r} is not an image reference",
            "use e.g. ubuntu:24.04",
        )


def parse_cmd(text: str | None) -> tuple[str, ...] | None:
    """`--cmd "uvicorn app:main --host 0.0.0.0"` -> argv (shell quoting rules)."""
    if text is None:
        return None
    try:
        argv = tuple(shlex.split(text))
    except ValueError as error:
        raise ContainerError(f"--cmd {text!r}: {error}", "quote it like a shell command") from None
    if not argv:
        raise ContainerError("--cmd is empty", "give the command the image runs by default")
    return argv


def parse_port(text: str | None) -> int | None:
    """`--port 8000` -> 8000; range checks happen in :func:`validate_options`."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ContainerError(
            f"--port {text!r} is not a port number", "use a TCP port such as 8000"
        ) from None


def plan_image(
    workspace: Workspace, environment: str | None = None, options: ContainerOptions | None = None
) -> ImagePlan:
    """Resolve the environment on its locked Linux platforms and decide what goes into the image."""
    options = options or ContainerOptions()
    validate_options(options)
    env_name = environment or str(workspace.config.get("environment") or DEFAULT_ENVIRONMENT)
    locked = workspace.locked_environments()
    if env_name not in locked:
        workspace.resolve(env_name, "linux-64")  # raises the workspace's unknown-environment error
        raise ContainerError(f"environment '{env_name}' is not in pixi.lock", "run `pixi lock`")
    if not _ENV_NAME_RE.match(env_name):
        raise ContainerError(
            f"environment name '{env_name}' cannot be used in image paths",
            "use lowercase letters, digits and dashes",
        )
    platforms = [p for p in locked[env_name] if p.startswith("linux-")]
    if locked[env_name] and not platforms:
        raise ContainerError(
            f"environment '{env_name}' has no Linux platform in pixi.lock "
            f"(locked: {', '.join(locked[env_name])})",
            "run `pixi workspace platform add linux-64` and `pixi lock`",
        )
    # linux-64 first: it is what CI runners and most clusters build and test on.
    platforms.sort(key=lambda p: (p != "linux-64", p != "linux-aarch64", p))
    if not platforms:  # an environment without dependencies locks no platform at all
        platforms = ["linux-64"]
    resolved = {p: workspace.resolve(env_name, p) for p in platforms}
    notes: list[str] = []
    needs_cuda = any(
        need.startswith("__cuda") for r in resolved.values() for need in r.virtual_packages
    )
    if needs_cuda and not options.cuda:
        notes.append(
            f"environment '{env_name}' needs __cuda; pass --cuda (e.g. --cuda 12) so pixi can "
            f"install it on a build machine without a GPU"
        )
    if not any(p in OCI_PLATFORMS for p in platforms):
        notes.append(
            f"the pixi image is published for linux-64 and linux-aarch64 only; "
            f"environment '{env_name}' is locked for {', '.join(platforms)}"
        )
    path_deps = any(p.is_path for r in resolved.values() for p in r.pypi_packages)
    sources = _sources(workspace.root, options.src)
    return ImagePlan(
        workspace=workspace,
        environment=env_name,
        platforms=tuple(platforms),
        lock_hashes={p: r.lock_hash for p, r in resolved.items()},
        manifest_name=workspace.manifest_path.name,
        sources=sources,
        has_path_dependencies=path_deps,
        needs_cuda=needs_cuda,
        options=options,
        notes=tuple(notes),
    )


def _sources(root: Path, requested: tuple[str, ...] | None) -> tuple[str, ...]:
    if requested is None:
        return ("src",) if (root / "src").is_dir() else ()
    result: list[str] = []
    resolved_root = root.resolve()
    for item in requested:
        path = Path(item)
        full = (path if path.is_absolute() else root / path).resolve()
        if not full.is_relative_to(resolved_root):
            raise ContainerError(
                f"--src {item} is outside the workspace {root}",
                "images can only copy files from the workspace (the build context)",
            )
        if not full.exists():
            raise ContainerError(f"--src {item} does not exist in {root}", "check the path")
        relative = full.relative_to(resolved_root).as_posix()
        if relative in (".", ""):
            raise ContainerError(
                "--src . would copy the whole workspace", "name the source folders instead"
            )
        if relative not in result:
            result.append(relative)
    return tuple(result)


def image_path(relative: str) -> str:
    """Where a workspace-relative path lands inside the image."""
    return str(PurePosixPath(APP_DIR) / relative)


def manifest_files(plan: ImagePlan) -> list[str]:
    return [plan.manifest_name, LOCK_NAME]


def write_files(files: dict[Path, str], force: bool) -> list[Path]:
    """Write all files or none: any existing file without ``force`` stops before the first write."""
    if not force:
        for path in files:
            if path.exists():
                raise ContainerError(f"{path} already exists", "pass --force to overwrite it")
    written = []
    for path, text in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as error:
            raise ContainerError(
                f"cannot write {path}: {error.strerror}", "check the output folder"
            ) from error
        written.append(path)
    return written
