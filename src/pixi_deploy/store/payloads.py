"""Conda package payloads shipped as they are, and extracted on the cluster.

Why: a ``.conda`` holds its files as a zstd-compressed tar. Laying such a package out here and
sending the installed files means decompressing it, hashing every file to group it, compressing
it again for the wire, and sending it. When the cluster has GNU tar and zstd, the payload can
instead travel byte for byte as it sits in the download cache (usually a third to a half of the
installed size), with no CPU spent on it here, and be unpacked on the cluster into the package's
object folder. The files that embed the prefix, the symlinks and conda-meta are laid out here as
before (`pack.direct` with ``defer_payloads``) and travel in the environment part, which
overrides the raw copies when the environment is assembled.

The stream is a plain tar of ``<key>.tar.zst`` members; the cluster's tar hands each member to
a small script (``--to-command``) that extracts it into ``groups/<key>/`` and then writes the
``groups/<key>.done`` marker, so a dropped connection resumes per package, as for the other
groups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pixi_deploy.pack.direct import DeferredPayload
from pixi_deploy.store.bundle import ChunkedWriter, Send
from pixi_deploy.tarwriter import TarWriter


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
        digest = hashlib.sha256(f"conda-payload-v1\0{identity}".encode()).hexdigest()[:32]
        groups.append(PayloadGroup(digest, payload))
    return groups


def stream_payloads(
    send: Send, groups: Sequence[PayloadGroup], missing: set[str], advance: Callable[[int], None]
) -> None:
    sink = ChunkedWriter(send)
    tar = TarWriter(sink, use_sendfile=False)  # type: ignore[arg-type]
    for group in groups:
        if group.key in missing:
            p = group.payload
            tar.add_file(f"{group.key}.tar.zst", p.archive, p.size, offset=p.offset)
            advance(p.size)
    tar.close()
    sink.flush()
