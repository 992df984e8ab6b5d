"""Unpack a pack into a folder, offline, all or nothing.

Everything happens in a work folder beside the target (same filesystem, so the final step is one
``rename``): members are checked against the metadata's sha256 as they stream out of the pack, the
environment is laid out for the target path, and only a complete, verified environment is renamed
into place. An error, Ctrl-C or SIGTERM removes the work folder; a kill -9 can leave it behind,
but never a half environment at the target path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import rattler
import zstandard

from pixi_deploy.activation import ManifestActivation
from pixi_deploy.errors import PackError, StoreError, store_error_from_os
from pixi_deploy.pack.archives import Archive, ArchiveSlice
from pixi_deploy.pack.format import LOCK_MEMBER, METADATA_NAME, ZSTD_MAGIC, PackedFile, PackMetadata
from pixi_deploy.pack.layout import check_environment_path, lay_out_prefix
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import scratch_folder

CHUNK = 1 << 20


@dataclass(frozen=True)
class UnpackResult:
    prefix: Path
    metadata: PackMetadata
    activate_script: Path


def read_metadata(pack: Path) -> PackMetadata:
    """Only the metadata (the first member): cheap, for `inspect`-like questions about a pack."""
    with _open_stream(pack) as (tar, _):
        return _first_metadata(tar, pack)


def unpack(pack: Path, target: Path, *, reporter: Reporter | None = None) -> UnpackResult:
    reporter = reporter or NullReporter()
    pack, target = Path(pack), Path(target).absolute()
    if not pack.is_file():
        raise PackError(f"pack {pack} does not exist", "check the path")
    _check_target(target)
    with work_folder(target) as work:
        metadata, lock_path, files = extract_verified(pack, work / "pkgs", reporter, in_place=True)
        records = records_from_lock(lock_path, metadata)
        reporter.step(
            f"installing {len(records)} conda packages and "
            f"{sum(1 for f in metadata.files if f.kind == 'pypi')} wheels for {target}"
        )
        staging = work / "prefix"
        _lay_out(metadata, records, files, staging, target, work / "cache")
        publish(staging, target)
    reporter.step(f"unpacked into {target}")
    return UnpackResult(target, metadata, target / "activate.sh")


def _lay_out(
    metadata: PackMetadata,
    records: list[rattler.RepoDataRecord],
    files: dict[str, Archive],
    staging: Path,
    target: Path,
    cache_dir: Path,
) -> None:
    archives = {
        Path(path).name: local for path, local in files.items() if path.startswith("conda/")
    }
    wheels = [files[f.path] for f in metadata.files if f.kind == "pypi"]
    assert all(isinstance(w, Path) for w in wheels)  # wheels are always copied out
    try:
        lay_out_prefix(
            records,
            archives,
            wheels,  # type: ignore[arg-type]
            staging=staging,
            final=target,
            platform=metadata.platform,
            python_version=metadata.python_version,
            cache_dir=cache_dir,
            environment=metadata.environment,
            direct=True,
            activation=ManifestActivation.from_pack_extra(metadata.extra),
        )
    except OSError as error:
        raise store_error_from_os(error, target) from error


def extract_verified(
    pack: Path, into: Path, reporter: Reporter, *, in_place: bool = False
) -> tuple[PackMetadata, Path, dict[str, Archive]]:
    """Stream the pack's members into ``into``, checking each against the metadata.

    With ``in_place``, an uncompressed pack's conda archives are not copied at all: they are
    hashed, and later read, where they are (`ArchiveSlice`)."""
    into.mkdir(parents=True, exist_ok=True)
    files: dict[str, Archive] = {}
    checks: list[tuple[str, Future[str]]] = []
    hasher = ThreadPoolExecutor(2)  # hash archive n while archive n+1 is copied
    try:
        with _open_stream(pack) as (tar, seekable):
            metadata = _first_metadata(tar, pack)
            expected = {f.path: f for f in metadata.files}
            lock_path: Path | None = None
            with reporter.task("verify", metadata.payload_bytes) as advance:
                while (member := tar.next()) is not None:
                    if member.name == LOCK_MEMBER:
                        lock_path = into / "pixi.lock"
                        _copy_member(tar, member, lock_path, None)
                        continue
                    entry = expected.get(member.name)
                    if entry is None or not member.isfile() or member.name in files:
                        raise PackError(
                            f"unexpected member '{member.name}' in {pack}", "re-create the pack"
                        )
                    if in_place and seekable and entry.kind == "conda":  # checked when used
                        files[member.name] = _slice_of(pack, member, entry)
                    else:
                        local = into / member.name
                        job = _copy_member_async(tar, member, local, entry.size, hasher, seekable)
                        checks.append((member.name, job))
                        files[member.name] = local
                    advance(entry.size)
            for name, check in checks:
                if check.result() != expected[name].sha256:
                    raise PackError(
                        f"{name} in {pack.name} is corrupt (sha256 mismatch)",
                        "re-create or re-download the pack",
                    )
    except (tarfile.ReadError, EOFError, zstandard.ZstdError) as error:
        raise PackError(
            f"{pack} is truncated or corrupt ({error})", "re-create or re-download the pack"
        ) from error
    except OSError as error:
        raise store_error_from_os(error, into) from error
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    missing = sorted(set(expected) - set(files))
    if missing or lock_path is None:
        what = missing[0] if missing else LOCK_MEMBER
        raise PackError(
            f"{pack} is truncated: {what} is missing ({len(missing)} files short)",
            "re-create or re-download the pack",
        )
    return metadata, lock_path, files


def records_from_lock(lock_path: Path, metadata: PackMetadata) -> list[rattler.RepoDataRecord]:
    lock = rattler.LockFile.from_path(lock_path)
    env = lock.environment(metadata.environment)
    if env is None:
        raise PackError("the pack's lock lacks its own environment", "re-create the pack")
    platform = next((p for p in env.platforms() if str(p) == metadata.platform), None)
    if platform is None:
        return []
    return list(env.conda_repodata_records_for_platform(platform) or [])


def _first_metadata(tar: tarfile.TarFile, pack: Path) -> PackMetadata:
    member = tar.next()
    if member is None or member.name != METADATA_NAME:
        raise PackError(
            f"{pack} is not a pixi-deploy pack", "pass a file written by `pixi-deploy pack`"
        )
    source = tar.extractfile(member)
    assert source is not None
    return PackMetadata.from_json(source.read())


def _copy_member_async(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    dest: Path,
    size: int,
    hasher: ThreadPoolExecutor,
    seekable: bool,
) -> Future[str]:
    """Copy one archive out of the pack; its sha256 is computed by ``hasher`` meanwhile.

    From an uncompressed pack the bytes are copied by the kernel (``copy_file_range``, a reflink
    on filesystems that have them); from a compressed one they stream through Python and are
    hashed on the way."""
    if member.size != size:
        raise PackError(
            f"{member.name} has {member.size} bytes, metadata says {size}", "re-create the pack"
        )
    source: Any = tar.fileobj
    if seekable and source is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        with dest.open("wb") as out:
            _copy_range(source.fileno(), out.fileno(), member.offset_data, size, member.name)
        return hasher.submit(_sha256_of, dest)
    done: Future[str] = Future()
    done.set_result(_copy_member(tar, member, dest, size))
    return done


def _copy_range(src: int, dst: int, offset: int, size: int, name: str) -> None:
    copied = 0
    use_copy_file_range = True
    while copied < size:
        try:
            if use_copy_file_range:
                n = os.copy_file_range(src, dst, size - copied, offset + copied)
            else:
                n = os.sendfile(dst, src, offset + copied, size - copied)
        except OSError as error:
            if use_copy_file_range and error.errno in (
                errno.EXDEV,
                errno.ENOSYS,
                errno.EOPNOTSUPP,
                errno.EINVAL,
            ):
                use_copy_file_range = False  # another filesystem (or an old kernel)
                continue
            raise
        if n == 0:
            raise EOFError(f"{name} ends early")
        copied += n


def _slice_of(pack: Path, member: tarfile.TarInfo, entry: PackedFile) -> ArchiveSlice:
    if member.size != entry.size:
        raise PackError(
            f"{member.name} has {member.size} bytes, metadata says {entry.size}",
            "re-create the pack",
        )
    name = Path(member.name).name
    return ArchiveSlice(pack, member.offset_data, entry.size, name, entry.sha256)


def _sha256_of(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path, size: int | None
) -> str:
    if size is not None and member.size != size:
        raise PackError(
            f"{member.name} has {member.size} bytes, metadata says {size}", "re-create the pack"
        )
    source = tar.extractfile(member)
    assert source is not None
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    remaining = member.size
    with dest.open("wb") as out:
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                raise EOFError(f"{member.name} ends early")
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


@contextmanager
def _open_stream(pack: Path) -> Iterator[tuple[tarfile.TarFile, bool]]:
    """The pack as a tar, and whether it is uncompressed (random access, kernel copies)."""
    with pack.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        stream: BinaryIO = raw
        if magic == ZSTD_MAGIC:
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_size=CHUNK)
        try:
            if stream is raw:  # uncompressed: random access, members copied by the kernel
                with tarfile.open(fileobj=raw, mode="r:") as tar:
                    yield tar, True
            else:
                with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tar:
                    yield tar, False
        except tarfile.ReadError as error:
            raise PackError(
                f"{pack} is not a pixi-deploy pack or is corrupt ({error})",
                "pass a file written by `pixi-deploy pack`",
            ) from error


def _check_target(target: Path) -> None:
    check_environment_path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreError(
            f"{target} already exists and is not empty", "pick a new folder or remove it"
        )
    parent = target.parent
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True)
        except OSError as error:
            raise store_error_from_os(error, parent) from error
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"{parent} is not writable", "pick a folder you can write to")


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


def publish(staging: Path, target: Path) -> None:
    """Move a complete environment into place in one step (an empty target folder is replaced)."""
    try:
        if target.is_dir():
            target.rmdir()  # only ever empty here: _check_target refused anything else
        os.rename(staging, target)
    except OSError as error:
        raise store_error_from_os(error, target) from error
