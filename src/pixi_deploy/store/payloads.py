"""Conda package payloads shipped as they are, and extracted on the cluster.

Why: a ``.conda`` holds its files as a zstd-compressed tar. Laying such a package out here and
sending the installed files means decompressing it, hashing every file to group it, compressing
it again for the wire, and sending it. When the cluster has GNU tar and zstd, the payload can
instead travel byte for byte as it sits in the download cache (usually a third to a half of the
installed size), with no CPU spent on it here, and be unpacked on the cluster into the package's
object folder. The files that embed the prefix, the symlinks and conda-meta are laid out here as
before (`pack.direct` with ``defer_payloads``) and travel in the environment part, which
overrides the raw copies when the environment is assembled.

The stream is the packages' own zstd frames back to back, each followed by a small frame of our
own: a tar of hard-link members ``.pd-objects/<key>/<path>``, one for each of the package's
files that are the same under every prefix, then the empty marker ``.pd-staged/<key>``. zstd
decompresses concatenated frames as one stream and GNU tar with ``--ignore-zeros`` reads
concatenated tars as one archive, so the cluster runs one ``zstd -d | tar -x`` for the whole
environment, straight into its staging folder, as ``tar -x`` of a finished tree would be; and
that same ``tar`` makes each package's object (the hard links that later environments reuse),
which cost three processes per package when a shell loop made them. The marker says the package
and its object arrived whole, so a dropped connection resumes per package.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zstandard

from pixi_deploy.pack.direct import DeferredPayload
from pixi_deploy.store.bundle import ChunkedWriter, Send
from pixi_deploy.tarwriter import TarWriter

CHUNK = 1 << 20
#: In the staging folder: each package's object (hard links), and the marker that it is whole.
OBJECTS, STAGED = ".pd-objects", ".pd-staged"


@dataclass(frozen=True)
class PayloadGroup:
    key: str
    payload: DeferredPayload

    @property
    def size(self) -> int:
        return self.payload.size


def payload_groups(deferred: Sequence[DeferredPayload]) -> list[PayloadGroup]:
    """Keyed by the archive's own checksum: the same package is the same object everywhere."""
    groups = []
    for payload in deferred:
        checksum = payload.record.sha256 or payload.record.md5
        identity = checksum.hex() if checksum else payload.record.file_name
        digest = hashlib.sha256(f"conda-payload-v2\0{identity}".encode()).hexdigest()[:32]
        groups.append(PayloadGroup(digest, payload))
    return groups


def shares(groups: Sequence[PayloadGroup], missing: set[str], n: int) -> list[list[PayloadGroup]]:
    """The missing payloads in ``n`` streams of about equal size, biggest first: two ``zstd |
    tar`` on the cluster keep its two cores busier than one (the stream is CPU-bound there)."""
    out: list[list[PayloadGroup]] = [[] for _ in range(n)]
    loads = [0] * n
    for group in sorted((g for g in groups if g.key in missing), key=lambda g: -g.size):
        i = loads.index(min(loads))
        out[i].append(group)
        loads[i] += group.size
    return [share for share in out if share]


def folders(groups: Sequence[PayloadGroup]) -> list[str]:
    """Made before concurrent streams start: two ``tar -x`` creating one missing folder at once
    can make one of them fail ("Cannot open: No such file or directory")."""
    found = {OBJECTS, STAGED}
    for group in groups:
        for folder in group.payload.folders:
            parts = folder.split("/")
            if folder.startswith("/") or ".." in parts:
                continue  # tar refuses such members anyway
            found.add(folder)
    return sorted(found)


def stream_payloads(
    send: Send, groups: Sequence[PayloadGroup], missing: set[str], advance: Callable[[int], None]
) -> None:
    sink = ChunkedWriter(send)
    for group in groups:
        if group.key not in missing:
            continue
        p = group.payload
        with p.archive.open("rb") as source:
            source.seek(p.offset)
            remaining = p.size
            while remaining:
                chunk = source.read(min(CHUNK, remaining))
                if not chunk:
                    raise OSError(f"{p.archive} shrank while it was being sent")
                sink.write(chunk)
                remaining -= len(chunk)
        sink.write(_marker(group))
        advance(p.size)
    sink.flush()


def _marker(group: PayloadGroup) -> bytes:
    buffer = io.BytesIO()
    tar = TarWriter(buffer, use_sendfile=False)
    tar.add_dir(f"{OBJECTS}/{group.key}")  # an object even when every file embeds the prefix
    for path in group.payload.shared_files:
        tar.add_hardlink(f"{OBJECTS}/{group.key}/{path}", path)
    tar.add_bytes(f"{STAGED}/{group.key}", b"")
    tar.close()
    return zstandard.ZstdCompressor(level=1).compress(buffer.getvalue())
