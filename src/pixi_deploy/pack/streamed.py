"""Unpack a pack read once from start to end (standard input, an HTTP download), all or nothing,
with the disk space of the environment alone.

The pack's order is what makes this possible (`pack.format`): the metadata comes first, so the
pack's digest (and ``--expect-digest``) and the machine's fitness are checked before a single
archive is read; the lock comes second, so every record is known before its archive arrives.
Each archive is then written to the work folder while its sha256 is computed, compared with the
metadata's, and only then handed to the payload writers (`pack.direct.StreamedDirect`), which
delete it once its files are in the staging prefix: at most a few archives are on disk at any
time, never the whole pack. The end of the stream is checked as for a file (nothing appended,
nothing missing) before the staging prefix is renamed into place, so a cut stream, a corrupted
byte or a stream that is not a pack leaves nothing at the target (`pack.unpack.target_work_folder`).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import rattler
import zstandard

from pixi_deploy.errors import PackError, store_error_from_os
from pixi_deploy.pack.archives import Archive
from pixi_deploy.pack.confined import ConfinedFolder
from pixi_deploy.pack.direct import DirectResult, StreamedDirect
from pixi_deploy.pack.format import PackMetadata
from pixi_deploy.pack.unpack import (
    UnpackResult,
    lay_out,
    publish,
    target_work_folder,
)
from pixi_deploy.pack.verify import (
    REDO,
    Counted,
    broken,
    check_digest,
    check_end,
    copy_member,
    first_metadata,
    next_member,
    open_pack_stream,
    read_lock,
    records_from_lock,
)
from pixi_deploy.progress import NullReporter, Reporter

#: Called with the metadata as soon as it is read (and its digest checked): the caller's own
#: checks of the machine (glibc, CUDA), which raise to stop before any archive is read.
MetadataCheck = Callable[[PackMetadata], None]


def unpack_stream(
    source: BinaryIO,
    label: str,
    target: Path,
    *,
    reporter: Reporter | None = None,
    expect_digest: str | None = None,
    check: MetadataCheck | None = None,
) -> UnpackResult:
    """Install the pack that ``source`` yields at ``target``; ``label`` names the stream in
    messages (``standard input``, the URL)."""
    reporter = reporter or NullReporter()
    target = Path(target).absolute()
    with target_work_folder(target) as work:
        metadata, digest = _install(source, label, work, target, reporter, expect_digest, check)
        publish(work / "prefix", target)
    reporter.step(f"unpacked into {target}")
    return UnpackResult(target, metadata, target / "activate.sh", digest)


def _install(
    source: BinaryIO,
    label: str,
    work: Path,
    target: Path,
    reporter: Reporter,
    expect_digest: str | None,
    check: MetadataCheck | None,
) -> tuple[PackMetadata, str]:
    pkgs, staging = work / "pkgs", work / "prefix"
    pkgs.mkdir()
    counted: Counted | None = None
    metadata: PackMetadata | None = None
    try:
        with open_pack_stream(source, label) as (tar, counted), ConfinedFolder(pkgs) as tree:
            metadata, digest, metadata_size = first_metadata(tar, label)
            check_digest(digest, expect_digest, label)
            if check is not None:
                check(metadata)
            lock_path = read_lock(tar, metadata, tree, pkgs, label)
            records = records_from_lock(lock_path, metadata)
            reporter.step(
                f"installing {len(records)} conda packages and "
                f"{sum(1 for f in metadata.files if f.kind == 'pypi')} wheels for {target} "
                f"as they stream from {label}"
            )
            files, done = _stream_archives(
                tar, tree, metadata, records, staging, target, label, reporter
            )
            extra = tar.next()
            if extra is not None:
                raise PackError(f"unexpected member '{extra.name[:80]}' in {label}", REDO)
            check_end(
                tar, counted, False, metadata, (metadata_size, lock_path.stat().st_size), label
            )
    except (tarfile.ReadError, EOFError, zstandard.ZstdError) as error:
        raise broken(label, error, counted, metadata) from error
    except OSError as error:
        raise store_error_from_os(error, target) from error
    lay_out(metadata, records, files, staging, target, work / "cache", installed=done)
    return metadata, digest


def _stream_archives(
    tar: tarfile.TarFile,
    tree: ConfinedFolder,
    metadata: PackMetadata,
    records: list[rattler.RepoDataRecord],
    staging: Path,
    target: Path,
    label: str,
    reporter: Reporter,
) -> tuple[dict[str, Archive], DirectResult]:
    """Every archive out of the stream, checked against its sha256 before it is used, and the
    conda ones written into ``staging`` as they come."""
    by_name = {record.file_name: record for record in records}
    files: dict[str, Archive] = {}
    with (
        StreamedDirect(staging, target) as direct,
        reporter.task("unpack", metadata.payload_bytes) as advance,
    ):
        for entry in metadata.files:
            member = next_member(tar, entry.path, entry.size, label)
            fd = tree.create_file(member.name, 0o644)
            with os.fdopen(fd, "wb") as out:
                digest = copy_member(tar, member, out)
            if digest != entry.sha256:
                raise PackError(f"{entry.path} in {label} is corrupt (sha256 mismatch)", REDO)
            local = Path(tree.root) / member.name
            files[member.name] = local
            if entry.kind == "conda":
                direct.add(by_name[Path(entry.path).name], local)
            advance(entry.size)
        return files, direct.finish(records)
