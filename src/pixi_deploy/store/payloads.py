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
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import rattler
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


def payload_key(record: rattler.RepoDataRecord) -> str:
    """Keyed by the archive's own checksum: the same package is the same object everywhere (and
    known before the package is even opened, so its upload can start early)."""
    checksum = record.sha256 or record.md5
    identity = checksum.hex() if checksum else record.file_name
    return hashlib.sha256(f"conda-payload-v2\0{identity}".encode()).hexdigest()[:32]


def payload_groups(deferred: Sequence[DeferredPayload]) -> list[PayloadGroup]:
    return [PayloadGroup(payload_key(payload.record), payload) for payload in deferred]


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


def stream_payloads(
    send: Send, groups: Iterable[PayloadGroup], advance: Callable[[int], None]
) -> None:
    """``groups`` may be a generator: packages are sent as they are laid out."""
    sink = ChunkedWriter(send)
    for group in groups:
        p = group.payload
        sink.write(_folders(p))
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


class EarlySender:
    """Sends payloads while the environment is still being laid out: each of ``streams``
    threads opens its stream when it takes its first package and then takes the next as they
    come, so the upload starts a fraction of a second into the deploy rather than after the
    layout. A stream that fails is left alone: the deploy asks the cluster again afterwards
    what it lacks, and sends that."""

    def __init__(self, start: Callable[[Iterable[PayloadGroup]], object], streams: int) -> None:
        self._start = start
        self._queue: queue.Queue[PayloadGroup | None] = queue.Queue()
        self.failures: list[BaseException] = []
        self._threads = [threading.Thread(target=self._stream, daemon=True) for _ in range(streams)]
        for thread in self._threads:
            thread.start()

    def add(self, group: PayloadGroup) -> None:
        self._queue.put(group)

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _stream(self) -> None:
        first = self._queue.get()
        if first is None:
            return  # an empty stream would be an error on the cluster ("not a tar archive")

        def groups() -> Iterator[PayloadGroup]:
            yield first
            while (group := self._queue.get()) is not None:
                yield group

        try:
            self._start(groups())
        except BaseException as error:  # the deploy's own send after the layout covers it
            self.failures.append(error)


def _folders(payload: DeferredPayload) -> bytes:
    """Folder members ahead of the payload: with two streams, two ``tar -x`` making one missing
    parent folder at once can make one of them fail ("Cannot open: No such file or
    directory"), while a folder member that finds its folder there already is fine."""
    wanted: set[str] = {OBJECTS, STAGED}  # the marker's parents: both streams write there
    for folder in payload.folders:
        parts = folder.split("/")
        if folder.startswith("/") or ".." in parts:
            continue  # tar refuses such members anyway
        wanted.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    buffer = io.BytesIO()
    tar = TarWriter(buffer, use_sendfile=False)
    for folder in sorted(wanted):
        tar.add_dir(folder)
    tar.close()
    return zstandard.ZstdCompressor(level=1).compress(buffer.getvalue())


def _marker(group: PayloadGroup) -> bytes:
    buffer = io.BytesIO()
    tar = TarWriter(buffer, use_sendfile=False)
    tar.add_dir(f"{OBJECTS}/{group.key}")  # an object even when every file embeds the prefix
    for path in group.payload.shared_files:
        tar.add_hardlink(f"{OBJECTS}/{group.key}/{path}", path)
    tar.add_bytes(f"{STAGED}/{group.key}", b"")
    tar.close()
    return zstandard.ZstdCompressor(level=1).compress(buffer.getvalue())
