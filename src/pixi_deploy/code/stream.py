"""The tar stream that carries a code snapshot to the cluster (see code/remote_scripts.RECEIVE).

Members, relative to ``BASE/code``:

1. ``.incoming-<hash>/objects/<key>``: the content of each object the cluster lacks, read-only
   (0444, 0555 when executable). A cut connection keeps those that arrived whole;
2. ``.<hash>.staging-<nonce>/files/<path>``: the tree, every file a *hard-link member* naming
   its object (``.incoming-...`` or ``.objects/<key>``), every symbolic link as itself. ``tar
   -x`` turns that into the snapshot with no process per file;
3. ``.<hash>.staging-<nonce>/snapshot.json``, last, so its presence means the tree is complete.

Each object is hashed again while it is sent: a file that changed since the snapshot was taken
aborts the stream (the cluster then publishes nothing) instead of storing wrong bytes under a
content key.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from pixi_deploy.code.snapshot import Snapshot, SnapshotEntry
from pixi_deploy.errors import WorkspaceError
from pixi_deploy.store.bundle import WIRE_ZSTD_LEVEL, ChunkedWriter

STORED = "stored"  # already in BASE/code/.objects
INCOMING = "incoming"  # sent now, or by an earlier (cut) upload


@dataclass(frozen=True)
class StreamPlan:
    """What one upload sends: which objects' bytes, and which paths of the tree."""

    snapshot: Snapshot
    nonce: str
    send: tuple[SnapshotEntry, ...]  # one entry per object whose content goes
    tree: tuple[SnapshotEntry, ...]  # the paths to (re)write into the staged tree
    where: dict[str, str]  # key -> STORED | INCOMING
    snapshot_json: bytes

    @property
    def content_bytes(self) -> int:
        return sum(e.size for e in self.send)


def write_stream(
    send: Callable[[bytes], None],
    plan: StreamPlan,
    compression: str,
    advance: Callable[[int], None],
) -> None:
    sink = ChunkedWriter(send)
    out: Any = sink
    compressor = None
    if compression == "zstd":
        raw: Any = sink  # zstandard only needs an object with write()
        compressor = zstandard.ZstdCompressor(level=WIRE_ZSTD_LEVEL).stream_writer(
            raw, closefd=False
        )
        out = compressor
    snapshot = plan.snapshot
    incoming = f".incoming-{snapshot.hash}/objects"
    stage = f".{snapshot.hash}.staging-{plan.nonce}"
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for entry in plan.send:
            _add_object(tar, snapshot.source(entry), entry, f"{incoming}/{entry.key}", advance)
        for entry in plan.tree:
            info = tarfile.TarInfo(f"{stage}/files/{entry.path}")
            info.mtime = 0
            if entry.link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.link, 0o777
            else:
                info.type = tarfile.LNKTYPE
                source = ".objects" if plan.where.get(entry.key) == STORED else incoming
                info.linkname = f"{source}/{entry.key}"
                info.mode = 0o555 if entry.executable else 0o444
            tar.addfile(info)
        info = tarfile.TarInfo(f"{stage}/snapshot.json")
        info.size, info.mode = len(plan.snapshot_json), 0o644
        tar.addfile(info, io.BytesIO(plan.snapshot_json))
    if compressor is not None:
        compressor.flush(zstandard.FLUSH_FRAME)
    sink.flush()


def _add_object(
    tar: tarfile.TarFile,
    source_path: Path,
    entry: SnapshotEntry,
    name: str,
    advance: Callable[[int], None],
) -> None:
    info = tarfile.TarInfo(name)
    info.size = entry.size
    info.mode = 0o555 if entry.executable else 0o444
    try:
        with open(source_path, "rb") as source:
            info.mtime = int(os.fstat(source.fileno()).st_mtime)
            hashing = _Hashing(source, advance)
            tar.addfile(info, hashing)
    except (OSError, tarfile.TarError) as error:
        raise _changed(entry.path) from error
    if hashing.hexdigest() != entry.sha256 or hashing.read_bytes != entry.size:
        raise _changed(entry.path)


def _changed(path: str) -> WorkspaceError:
    return WorkspaceError(
        f"{path} changed while the code snapshot was sent (nothing was published)",
        "run the command again once nothing is changing the workspace",
    )


class _Hashing(io.RawIOBase):
    """A reader that hashes what tarfile copies and reports its progress."""

    def __init__(self, source: BinaryIO, advance: Callable[[int], None]) -> None:
        self.source = source
        self.advance = advance
        self.digest = hashlib.sha256()
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.digest.update(data)
        self.read_bytes += len(data)
        self.advance(len(data))
        return data

    def hexdigest(self) -> str:
        return self.digest.hexdigest()


def unique_objects(entries: Iterable[SnapshotEntry]) -> list[SnapshotEntry]:
    """One entry per object key (files with the same content share one object)."""
    seen: dict[str, SnapshotEntry] = {}
    for entry in entries:
        if entry.link is None and entry.key not in seen:
            seen[entry.key] = entry
    return list(seen.values())
