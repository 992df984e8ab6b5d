"""Write a pack: fetch into the cache, then stream every archive into one tar, verifying as we go.

The tar is written by hand (headers from :mod:`tarfile`, payload with ``os.sendfile``) because the
payload is megabytes of already-compressed archives: the kernel copies them without passing
through Python, while a second thread hashes the same file from the page cache. That keeps an
uncompressed pack close to ``tar -c`` even though every byte is checked against the lock.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import rattler
import zstandard

from pixi_deploy.activation import PACK_EXTRA_KEY
from pixi_deploy.channels import redact
from pixi_deploy.errors import PackError, store_error_from_os
from pixi_deploy.pack.fetch import Artifact, DownloadCache, artifacts_of
from pixi_deploy.pack.format import (
    LOCK_MEMBER,
    METADATA_NAME,
    PackedFile,
    PackMetadata,
    digest_of,
)
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import discarded_on_exit
from pixi_deploy.tarwriter import TarWriter
from pixi_deploy.workspace import ResolvedEnvironment, file_name_part

COMPRESSIONS = ("none", "zstd")


@dataclass(frozen=True)
class PackResult:
    path: Path
    metadata: PackMetadata
    size: int
    digest: str  # sha256:<hex> of the metadata member: `unpack --expect-digest` checks it


def default_pack_name(resolved: ResolvedEnvironment, compression: str) -> str:
    """One file name in the current folder, whatever the workspace is called."""
    suffix = ".tar.zst" if compression == "zstd" else ".tar"
    stem = f"{resolved.workspace.name}-{resolved.name}-{resolved.platform}-{resolved.short_hash}"
    return file_name_part(stem) + suffix


def write_pack(
    resolved: ResolvedEnvironment,
    output: Path | None = None,
    *,
    compression: str = "none",
    cache: DownloadCache | None = None,
    reporter: Reporter | None = None,
    zstd_level: int = 3,
) -> PackResult:
    """Write the pack for ``resolved``; the output appears only when it is complete and verified."""
    if compression not in COMPRESSIONS:
        raise PackError(
            f"unknown compression '{compression}'", f"use one of {', '.join(COMPRESSIONS)}"
        )
    reporter = reporter or NullReporter()
    cache = cache or DownloadCache()
    output = Path(output or default_pack_name(resolved, compression)).resolve()
    artifacts = artifacts_of(resolved)
    cached = cache.fetch_all(artifacts, reporter)
    metadata = build_metadata(resolved, artifacts)
    lock_bytes = mini_lock(resolved)
    metadata.lock_sha256 = hashlib.sha256(lock_bytes).hexdigest()

    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise store_error_from_os(error, output.parent) from error
    try:
        # the partial file's removal is armed before it exists: a signal cannot fall between
        with discarded_on_exit(lambda: _new_partial(output), _discard_partial) as (fd, partial):
            with os.fdopen(fd, "wb") as raw:
                reporter.step(
                    f"writing {len(artifacts)} archives ({_mb(metadata.payload_bytes)}) "
                    f"to {output.name}"
                )
                with reporter.task("pack", metadata.payload_bytes) as advance:
                    if compression == "zstd":
                        params = zstandard.ZstdCompressionParameters.from_level(
                            zstd_level, threads=_threads(), job_size=ZSTD_JOB_SIZE
                        )
                        compressor = zstandard.ZstdCompressor(compression_params=params)
                        with compressor.stream_writer(raw, closefd=False) as zout:
                            digest = _write_members(
                                zout, metadata, lock_bytes, artifacts, cached, False, advance, cache
                            )
                    else:
                        digest = _write_members(
                            raw, metadata, lock_bytes, artifacts, cached, True, advance, cache
                        )
                raw.flush()  # no fsync: like tar and conda-pack; the rename is what is atomic
            os.replace(partial, output)
    except OSError as error:
        raise PackError(
            f"cannot write {output}: {error.strerror}", "free space or pick another -o"
        ) from error
    return PackResult(output, metadata, output.stat().st_size, digest)


def _new_partial(output: Path) -> tuple[int, Path]:
    """An empty ``.NAME.*.partial`` beside ``output`` (open, with the mode the pack will have)."""
    try:
        fd, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".partial")
    except OSError as error:
        raise store_error_from_os(error, output.parent) from error
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError as error:
        os.close(fd)
        Path(name).unlink(missing_ok=True)
        raise store_error_from_os(error, output.parent) from error
    return fd, Path(name)


def _discard_partial(made: tuple[int, Path]) -> None:
    made[1].unlink(missing_ok=True)  # gone already once renamed into place


def build_metadata(resolved: ResolvedEnvironment, artifacts: list[Artifact]) -> PackMetadata:
    files = []
    for artifact in artifacts:
        size = artifact.size
        files.append(
            PackedFile(
                artifact.pack_path, artifact.sha256, size or -1, artifact.kind, artifact.name
            )
        )
    return PackMetadata(
        environment=resolved.name,
        platform=resolved.platform,
        lock_hash=resolved.lock_hash,
        channels=[redact(c) for c in resolved.channels],
        virtual_packages=list(resolved.virtual_packages),
        files=files,
        python_version=resolved.python_version,
        workspace=resolved.workspace.name,
        extra={**resolved.provenance(), **_activation_extra(resolved)},
    )


def _activation_extra(resolved: ResolvedEnvironment) -> dict[str, object]:
    """The manifest's activation, scripts included, so unpack alone activates fully."""
    if resolved.activation is None:
        return {}
    return {PACK_EXTRA_KEY: resolved.activation.to_pack_extra()}


def mini_lock(resolved: ResolvedEnvironment) -> bytes:
    """A pixi.lock with exactly this environment and platform (pixi's own format, version 7),
    every URL in it without credentials (they stay in memory, for downloads)."""
    lock = rattler.LockFile([rattler.LockPlatform(resolved.platform)])
    lock_platform = lock.platforms()[0]
    lock.set_channels(resolved.name, [rattler.LockChannel(redact(c)) for c in resolved.channels])
    originals = [(r.url, r.channel) for r in resolved.conda_records]
    try:
        for record in resolved.conda_records:
            record.url = redact(str(record.url))
            if record.channel:
                record.channel = redact(str(record.channel))
            lock.add_conda_package(resolved.name, lock_platform, record)
    finally:
        for record, (url, channel) in zip(resolved.conda_records, originals, strict=True):
            record.url, record.channel = url, channel
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pixi.lock"
        lock.to_path(path)
        return path.read_bytes()


def _write_members(
    out: BinaryIO,
    metadata: PackMetadata,
    lock_bytes: bytes,
    artifacts: list[Artifact],
    cached: dict[Artifact, Path],
    use_sendfile: bool,
    advance: Callable[[int], None],
    cache: DownloadCache,
) -> str:
    """Returns the pack's digest."""
    # Sizes are taken from the cache (the lock may omit them); the metadata is written after
    # they are known, but before any archive, so readers see it first.
    sizes = {a: cached[a].stat().st_size for a in artifacts}
    metadata.files = [
        PackedFile(f.path, f.sha256, sizes[a], f.kind, f.name)
        for f, a in zip(metadata.files, artifacts, strict=True)
    ]
    tar = TarWriter(out, use_sendfile=use_sendfile)
    metadata_bytes = metadata.to_json()
    tar.add_bytes(METADATA_NAME, metadata_bytes)
    tar.add_bytes(LOCK_MEMBER, lock_bytes)
    with ThreadPoolExecutor(1) as hasher:  # hash file n while the kernel copies it
        checks: list[tuple[Artifact, Future[str]]] = []
        for artifact in artifacts:
            path = cached[artifact]
            checks.append((artifact, hasher.submit(_sha256_file, path)))
            tar.add_file(artifact.pack_path, path, sizes[artifact])
            advance(sizes[artifact])
        for artifact, check in checks:
            if check.result() != artifact.sha256:
                cache.path_for(artifact).unlink(missing_ok=True)
                raise PackError(
                    f"cached {artifact.filename} does not match the sha256 in pixi.lock",
                    "the bad cache entry was removed; run the command again to fetch it afresh",
                )
    tar.close()
    return digest_of(metadata_bytes)


def _sha256_file(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


#: zstd's worker threads and the input each compresses at a time. zstd's default job for an
#: unknown-size stream is tens of MB, and every worker holds its job, the overlap and the output:
#: `pack --compress` peaked at 190 MB with two threads (145 MB with one), and "one thread per
#: core" would have made it grow with the machine (issue 18). 4 MB jobs compress as fast here
#: (measured: 1.55 s vs 1.63 s for 1 GB with two threads) in about 40 MB; past 4 threads the
#: pack is bound by reading the archives anyway.
ZSTD_JOB_SIZE = 4 << 20
MAX_ZSTD_THREADS = 4


def _threads() -> int:
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 1
    return max(1, min(MAX_ZSTD_THREADS, usable))


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
