"""Send an image to the cluster while ``mksquashfs`` is still writing it.

mksquashfs appends to its output and, at the very end, goes back to write the superblock at
its start. So the growing file is streamed as it grows, then its first block is sent again
and written in place, and the copy on the cluster is checked against the finished image's
sha256: the transfer overlaps the build instead of following it. Anything else written out of
order would show as a checksum mismatch, and the caller then sends the finished image whole.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from pixi_deploy.store.image import SHA256_SH, ImageBuild, sha256_of
from pixi_deploy.transport import CommandResult, Transport

CHUNK = 1 << 20
#: Sent again at the end: the superblock (96 bytes) with room to spare.
HEAD = 64 * 1024
POLL_SECONDS = 0.05

# Receive the growing image under its staging name ($1). A failed write (a full disk) removes
# the partial copy and reads the rest of the stream away: the sender then gets cat's message and
# the exit status, not a broken pipe that would look like a dropped connection.
RECEIVE = r"""
set -eu
umask 022
mkdir -p "${1%/*}"
if ! cat > "$1"; then
  rm -f -- "$1"
  cat > /dev/null
  exit 4
fi
"""

# Write the head (stdin, $3 bytes) over the start of the image, check its size ($2), print its
# sha256.  $1 = staging path
PATCH = (
    SHA256_SH
    + r"""
set -eu
dd of="$1" bs="$3" count=1 conv=notrunc iflag=fullblock 2>/dev/null
[ "$(wc -c < "$1")" = "$2" ] || { echo "the image did not arrive whole" >&2; exit 4; }
__pd_sha256 < "$1"
"""
)


def send_while_building(
    transport: Transport,
    build: ImageBuild,
    staged: str,
    advance: Callable[[int], None],
) -> tuple[CommandResult, Callable[[], tuple[str, CommandResult]]]:
    """Stream the growing image; returns the stream's result and ``finish``, which (once the
    build has ended well) sends the head again and returns (local sha256, the patch's result,
    whose stdout is the cluster copy's sha256)."""
    image = build.image

    def produce(write: Callable[[bytes], None]) -> None:
        while not image.exists():
            if not build.running():
                return
            time.sleep(POLL_SECONDS)
        sent = 0
        with open(image, "rb") as source:
            while True:
                finished = not build.running()
                size = os.fstat(source.fileno()).st_size
                while sent < size:
                    chunk = source.read(min(CHUNK, size - sent))
                    if not chunk:
                        break
                    write(chunk)
                    sent += len(chunk)
                    advance(len(chunk))
                if finished:
                    return
                time.sleep(POLL_SECONDS)

    result = transport.pipe(["sh", "-c", RECEIVE, "sh", staged], produce)

    def finish() -> tuple[str, CommandResult]:
        size = image.stat().st_size
        with open(image, "rb") as source:
            head = source.read(min(HEAD, size))
        digest = sha256_of(Path(image))
        argv = ["sh", "-c", PATCH, "sh", staged, str(size), str(len(head))]
        return digest, transport.pipe(argv, lambda write: write(head))

    return result, finish
