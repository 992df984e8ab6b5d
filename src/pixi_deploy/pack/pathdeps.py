"""Turn path (and, on request, source) PyPI dependencies into wheels that install offline.

pixi locks ``myproject = { path = ".", editable = true }`` as a path without a hash: what gets
deployed is whatever the source tree holds when the pack is made. So at pack time each path
dependency is built into a wheel (PEP 517, with ``build`` or ``uv build``), the wheel goes into the
pack like any other and is installed as a normal, non-editable package on the target.

The environment's identity (its lock hash, hence its deployment path) includes each built wheel's
*content hash*: the sorted names, modes and sha256 of its files, RECORD excluded, so zip
timestamps and entry order do not matter. Changed code makes a new deployment; unchanged code the
same one. Builds are cached by a hash of the source tree (``<cache>/built/<tree-hash>/``), so a
redeploy without changes does not rebuild at all.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from installer.utils import parse_wheel_filename

from pixi_deploy.errors import FetchError, PackError
from pixi_deploy.pack.archives import ArchiveSlice
from pixi_deploy.pack.confined import extract_tar
from pixi_deploy.pack.fetch import Artifact, DownloadCache
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import scratch_folder
from pixi_deploy.workspace import PypiPackage, ResolvedEnvironment, current_platform

#: 1980-01-01, the earliest time a zip entry can carry: builders honouring SOURCE_DATE_EPOCH
#: then write the same zip for the same sources.
SOURCE_DATE_EPOCH = "315532800"
BUILD_TIMEOUT = 1800
#: Folders never part of a source tree's identity: VCS data, environments, caches, build output.
_SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        ".pixi",
        ".venv",
        "venv",
        ".tox",
        ".nox",
        "__pycache__",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        "build",
        "dist",
        "node_modules",
    }
)
_SKIP_SUFFIXES = (".pyc", ".pyo")
_SDIST_SUFFIXES = (".tar.gz", ".zip", ".tar.bz2", ".tgz")


def build_path_dependencies(
    resolved: ResolvedEnvironment,
    cache: DownloadCache,
    *,
    build_sdists: bool = False,
    reporter: Reporter | None = None,
) -> ResolvedEnvironment:
    """``resolved`` with every path dependency (and, with ``build_sdists``, every sdist) replaced
    by a wheel built here, its content hash joining the environment's hash."""
    reporter = reporter or NullReporter()
    packages = []
    changed = False
    for package in resolved.pypi_packages:
        if package.origin:  # already built or injected
            packages.append(package)
            continue
        if package.is_path and not _is_wheel(package.location):
            packages.append(_build_path(resolved, package, cache, reporter))
            changed = True
        elif not package.is_path and not _is_wheel(package.location):
            if not build_sdists:
                raise FetchError(
                    f"PyPI package '{package.name}' is locked as a source distribution "
                    f"({_filename(package.location)})",
                    "pass --build-sdists to build a wheel from it here, or lock a wheel for it",
                )
            packages.append(_build_sdist(resolved, package, cache, reporter))
            changed = True
        elif package.is_path:  # a local wheel file: hash it, use it as it is
            packages.append(_local_wheel(resolved, package))
            changed = True
        else:
            packages.append(package)
    if not changed:
        return resolved
    return resolved.with_packages(pypi_packages=tuple(packages))


# -- one package ----------------------------------------------------------------------------


def _build_path(
    resolved: ResolvedEnvironment, package: PypiPackage, cache: DownloadCache, reporter: Reporter
) -> PypiPackage:
    source = local_path(resolved, package)
    if not source.exists():
        raise PackError(
            f"path dependency '{package.name}' ({package.location}) does not exist at {source}",
            "fix the path in the manifest and re-lock",
        )
    if source.is_file():  # a path to an sdist archive
        key = "sdist-" + _sha256_file(source)
        wheel = _cached_or_built(
            cache, key, package, reporter, lambda out: _build_archive(source, package, out)
        )
    else:
        key = "tree-" + tree_hash(source)
        wheel = _cached_or_built(
            cache, key, package, reporter, lambda out: build_wheel(source, package.name, out)
        )
    return _as_package(resolved, package, wheel, f"path:{package.location}")


def _build_sdist(
    resolved: ResolvedEnvironment, package: PypiPackage, cache: DownloadCache, reporter: Reporter
) -> PypiPackage:
    filename = _filename(package.location)
    if package.sha256 is None:
        raise FetchError(
            f"source distribution {filename} of '{package.name}' has no sha256 in pixi.lock",
            "re-lock with a current pixi",
        )
    artifact = Artifact("sdist", package.location, filename, package.sha256, None, package.name)
    archive = cache.fetch_all([artifact], reporter)[artifact]
    ArchiveSlice.of_file(archive, package.sha256).verify()  # the cache may have changed since
    key = "sdist-" + package.sha256
    wheel = _cached_or_built(
        cache, key, package, reporter, lambda out: _build_archive(archive, package, out)
    )
    return _as_package(resolved, package, wheel, f"sdist:{filename}")


def _local_wheel(resolved: ResolvedEnvironment, package: PypiPackage) -> PypiPackage:
    wheel = local_path(resolved, package)
    if not wheel.is_file():
        raise PackError(
            f"wheel of path dependency '{package.name}' does not exist at {wheel}",
            "build it, or fix the path and re-lock",
        )
    return _as_package(resolved, package, wheel, f"path:{package.location}")


def _as_package(
    resolved: ResolvedEnvironment, package: PypiPackage, wheel: Path, origin: str
) -> PypiPackage:
    _check_platform(resolved, package, wheel)
    try:
        version = str(parse_wheel_filename(wheel.name).version)
    except ValueError:
        version = package.version
    return replace(
        package,
        version=version,
        location=wheel.resolve().as_uri(),
        sha256=_sha256_file(wheel),
        identity="wheel-content:" + wheel_content_hash(wheel),
        origin=origin,
    )


def _check_platform(resolved: ResolvedEnvironment, package: PypiPackage, wheel: Path) -> None:
    try:
        tag = parse_wheel_filename(wheel.name).tag
    except ValueError:
        return
    pure = tag.endswith("-none-any")
    if not pure and resolved.platform != current_platform():
        raise PackError(
            f"path dependency '{package.name}' builds a platform-specific wheel ({tag}) here "
            f"({current_platform()}), but the environment is for {resolved.platform}",
            f"pack on a {resolved.platform} machine",
        )


def local_path(resolved: ResolvedEnvironment, package: PypiPackage) -> Path:
    """Where a path dependency lives: relative locations are relative to the workspace root."""
    location = package.location
    if location.startswith("file://"):
        return Path(urllib.request.url2pathname(urllib.parse.urlsplit(location).path))
    path = Path(location).expanduser()
    return path if path.is_absolute() else (resolved.workspace.root / path).resolve()


# -- cache ----------------------------------------------------------------------------------


def _cached_or_built(
    cache: DownloadCache,
    key: str,
    package: PypiPackage,
    reporter: Reporter,
    build: Callable[[Path], Path],
) -> Path:
    folder = cache.root / "built" / key
    done = folder / "wheel.json"
    if done.is_file():
        name = json.loads(done.read_text()).get("wheel", "")
        wheel = folder / name
        if name and wheel.is_file():
            return wheel
    reporter.step(f"building a wheel of {package.name}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    # armed before it exists, and removed by a later build if this one is killed
    with scratch_folder(folder.parent, f".{key}.build-") as work:
        wheel = build(work / "out")
        staged = work / "entry"
        staged.mkdir()
        os.replace(wheel, staged / wheel.name)
        (staged / "wheel.json").write_text(json.dumps({"wheel": wheel.name}) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(staged, folder)
        except OSError:
            if not done.is_file():  # else a concurrent build of the same sources won: use it
                raise
            name = json.loads(done.read_text()).get("wheel", wheel.name)
            return folder / name
    return folder / wheel.name


# -- hashing --------------------------------------------------------------------------------


def tree_hash(root: Path) -> str:
    """sha256 over a source tree: relative paths, executable bits and file contents.

    VCS folders, environments, caches and build output are left out (see ``_SKIP_DIRS``).
    """
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if name.endswith(_SKIP_SUFFIXES):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                digest.update(f"L {rel}\0{os.readlink(path)}\n".encode())
                continue
            try:
                mode = "x" if os.access(path, os.X_OK) else "-"
                digest.update(f"F {rel}\0{mode}\0{_sha256_file(path)}\n".encode())
            except OSError:
                continue  # a socket, a file removed meanwhile: not source
    return digest.hexdigest()


def wheel_content_hash(wheel: Path) -> str:
    """sha256 over a wheel's files (names, executable bits, content hashes), RECORD excluded.

    Two builds of the same sources give the same hash even when their zips differ in timestamps,
    compression or entry order.
    """
    lines = []
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.is_dir() or info.filename.endswith(".dist-info/RECORD"):
                    continue
                executable = "x" if (info.external_attr >> 16) & 0o111 else "-"
                content = hashlib.sha256(archive.read(info)).hexdigest()
                lines.append(f"{info.filename}\0{executable}\0{content}")
    except (OSError, zipfile.BadZipFile) as error:
        raise PackError(f"{wheel.name} is not a valid wheel ({error})") from error
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


# -- building -------------------------------------------------------------------------------


def build_wheel(source: Path, name: str, out: Path) -> Path:
    """Build a wheel of ``source`` into ``out`` (PEP 517); returns its path.

    With ``build`` importable, the backend runs in this interpreter when its requirements are
    installed (``--no-isolation``, no network), else in an isolated environment (needs the
    index); without ``build``, ``uv build`` is used.
    """
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SOURCE_DATE_EPOCH": SOURCE_DATE_EPOCH, "PYTHONHASHSEED": "0"}
    attempts: list[list[str]] = []
    if importlib.util.find_spec("build") is not None:
        base = [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)]
        attempts = [[*base, "--no-isolation"], base]
    elif shutil.which("uv"):
        attempts = [["uv", "build", "--wheel", "--out-dir", str(out), str(source)]]
    else:
        raise PackError(
            f"cannot build path dependency '{name}': neither `build` nor `uv` is installed",
            "pip install build (or install uv)",
        )
    last = ""
    for index, argv in enumerate(attempts):
        try:
            run = subprocess.run(
                argv,
                cwd=source,
                env=env,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise PackError(f"path dependency '{name}' does not build: {error}") from error
        wheels = sorted(out.glob("*.whl"))
        if run.returncode == 0 and wheels:
            return wheels[-1]
        output = run.stderr + "\n" + run.stdout
        last = _last_error(output)
        isolated_next = index + 1 < len(attempts)
        if not (isolated_next and _missing_backend(output)):
            break
    raise PackError(
        f"path dependency '{name}' ({source}) does not build: {last}",
        "fix the build, or try it yourself with `python -m build --wheel`",
    )


def _build_archive(archive: Path, package: PypiPackage, out: Path) -> Path:
    """Unpack an sdist and build a wheel from it."""
    with tempfile.TemporaryDirectory(prefix="pixi-deploy-sdist-") as tmp:
        root = Path(tmp)
        try:
            if archive.name.endswith(".zip"):
                with zipfile.ZipFile(archive) as zipped:
                    for member in zipped.namelist():
                        if member.startswith("/") or ".." in Path(member).parts:
                            raise PackError(f"{archive.name} has an unsafe member {member!r}")
                    zipped.extractall(root)  # noqa: S202 (members checked above)
            else:
                with tarfile.open(archive) as tarred:
                    extract_tar(tarred, root)  # never tarfile's own filter: see confined.py
        except (OSError, tarfile.TarError, zipfile.BadZipFile) as error:
            raise PackError(
                f"source distribution of '{package.name}' cannot be unpacked ({error})"
            ) from error
        entries = [p for p in root.iterdir() if p.is_dir()]
        source = entries[0] if len(entries) == 1 else root
        return build_wheel(source, package.name, out)


def _missing_backend(output: str) -> bool:
    markers = ("Missing dependencies", "is not available", "No module named", "ModuleNotFoundError")
    return any(marker in output for marker in markers)


def _last_error(output: str) -> str:
    """The builder's last meaningful line(s), joined on one line."""
    noise = ("ERROR Backend subprocess exited", "Traceback (most recent call last)")
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.strip().startswith(noise) and not line.startswith("  File ")
    ]
    picked = lines[-2:] if len(lines) >= 2 else lines
    text = " | ".join(picked) or "no output"
    return text[-400:]


def _is_wheel(location: str) -> bool:
    return _filename(location).endswith(".whl")


def _filename(location: str) -> str:
    return urllib.parse.unquote(location.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1])
