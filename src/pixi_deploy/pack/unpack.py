"""Unpack a pack into a folder, offline, all or nothing.

Everything happens in a work folder beside the target (same filesystem, so the final step is one
``rename``): members are checked against the metadata's sha256 as they stream out of the pack, the
environment is laid out for the target path, and only a complete, verified environment is renamed
into place. An error, Ctrl-C or SIGTERM removes the work folder; a kill -9 can leave it behind,
but never a half environment at the target path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import rattler

from pixi_deploy.activation import ManifestActivation
from pixi_deploy.errors import PackError, StoreError, store_error_from_os
from pixi_deploy.pack.archives import Archive
from pixi_deploy.pack.direct import DirectResult
from pixi_deploy.pack.format import PackMetadata, normalize_digest
from pixi_deploy.pack.layout import check_environment_path, lay_out_prefix
from pixi_deploy.pack.verify import (
    check_digest,
    extract_verified,
    read_pack_header,
    records_from_lock,
)
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import scratch_folder

__all__ = [
    "UnpackResult",
    "check_target_folder",
    "extract_verified",
    "lay_out",
    "pack_digest",
    "publish",
    "read_metadata",
    "records_from_lock",
    "target_work_folder",
    "unpack",
    "work_folder",
]


@dataclass(frozen=True)
class UnpackResult:
    prefix: Path
    metadata: PackMetadata
    activate_script: Path
    digest: str = ""


def read_metadata(pack: Path) -> PackMetadata:
    """Only the metadata (the first member): cheap, for `inspect`-like questions about a pack."""
    return read_pack_header(_existing(pack))[0]


def pack_digest(pack: Path) -> str:
    """The pack's digest (``sha256:<hex>`` of its metadata, which holds the sha256 of its lock
    and of every archive): what `unpack` with ``expect_digest`` compares."""
    return read_pack_header(_existing(pack))[1]


def unpack(
    pack: Path,
    target: Path,
    *,
    reporter: Reporter | None = None,
    expect_digest: str | None = None,
) -> UnpackResult:
    """Install ``pack`` at ``target``. ``expect_digest``: refuse any pack whose digest differs
    (checked before anything is written)."""
    reporter = reporter or NullReporter()
    pack, target = _existing(pack), Path(target).absolute()
    digest = read_pack_header(pack)[1]
    if expect_digest is not None:
        check_digest(digest, normalize_digest(expect_digest), pack)
    with target_work_folder(target) as work:
        metadata, lock_path, files = extract_verified(  # the same pack, all the way through
            pack, work / "pkgs", reporter, in_place=True, expect_digest=digest
        )
        records = records_from_lock(lock_path, metadata)
        reporter.step(
            f"installing {len(records)} conda packages and "
            f"{sum(1 for f in metadata.files if f.kind == 'pypi')} wheels for {target}"
        )
        staging = work / "prefix"
        lay_out(metadata, records, files, staging, target, work / "cache")
        publish(staging, target)
    reporter.step(f"unpacked into {target}")
    return UnpackResult(target, metadata, target / "activate.sh", digest)


def _existing(pack: Path) -> Path:
    pack = Path(pack)
    if not pack.is_file():
        raise PackError(f"pack {pack} does not exist", "check the path")
    return pack


def lay_out(
    metadata: PackMetadata,
    records: list[rattler.RepoDataRecord],
    files: dict[str, Archive],
    staging: Path,
    target: Path,
    cache_dir: Path,
    installed: DirectResult | None = None,
) -> None:
    """The environment from the verified archives ``files`` (member name -> local archive);
    ``installed``: what `pack.direct.StreamedDirect` wrote into ``staging`` already."""
    archives = {
        Path(path).name: local for path, local in files.items() if path.startswith("conda/")
    }
    wheels = [files[f.path] for f in metadata.files if f.kind == "pypi"]
    try:
        lay_out_prefix(
            records,
            archives,
            wheels,
            staging=staging,
            final=target,
            platform=metadata.platform,
            python_version=metadata.python_version,
            cache_dir=cache_dir,
            environment=metadata.environment,
            direct=True,
            activation=ManifestActivation.from_pack_extra(metadata.extra),
            needs=metadata.virtual_packages,
            installed=installed,
        )
    except OSError as error:
        raise store_error_from_os(error, target) from error


def check_target_folder(target: Path) -> list[Path]:
    """Refuse a target that cannot be used; make its parent folders. Returns the folders it
    made, deepest first (removed again if the unpack fails)."""
    check_environment_path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreError(
            f"{target} already exists and is not empty", "pick a new folder or remove it"
        )
    parent = target.parent
    made = [p for p in (parent, *parent.parents) if not p.exists()]
    if made:
        try:
            parent.mkdir(parents=True)
        except OSError as error:
            raise store_error_from_os(error, parent) from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{parent} is not writable", "pick a folder you can write to")
    return made


@contextmanager
def work_folder(target: Path) -> Iterator[Path]:
    """A scratch folder beside ``target`` (so that publishing it is one rename), removed
    whatever happens; after a kill -9, by the next unpack to the same target."""
    with ExitStack() as stack:
        try:
            work = stack.enter_context(
                scratch_folder(target.parent, f".{target.name}.pixi-deploy-")
            )
        except OSError as error:
            raise store_error_from_os(error, target.parent) from error
        yield work


@contextmanager
def target_work_folder(target: Path) -> Iterator[Path]:
    """`check_target_folder`, then `work_folder`: the one way an unpack starts. If the body
    fails, the parent folders the check made are removed again, so nothing of a failed
    unpack stays behind (the work folder goes whatever happens)."""
    made = check_target_folder(target)
    try:
        with work_folder(target) as work:
            yield work
    except BaseException:
        for folder in made:  # deepest first: only the empty ones this unpack made
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def publish(staging: Path, target: Path) -> None:
    """Move a complete environment into place in one step (an empty target folder is replaced)."""
    try:
        if target.is_dir():
            target.rmdir()  # only ever empty here: _check_target refused anything else
        os.rename(staging, target)
    except OSError as error:
        raise store_error_from_os(error, target) from error
