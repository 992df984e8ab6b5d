"""Conda archives where they lie: a file in the download cache, or a slice of an uncompressed
pack (read in place, never copied out), opened as a stream or mapped into memory."""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pixi_deploy.errors import PackError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveSlice:
    """An archive read in place from inside an uncompressed pack: no copy on the way in."""

    pack: Path
    offset: int
    size: int
    name: str
    sha256: str | None = None  # expected; checked by `verify` right before the bytes are used

    def open(self) -> BinaryIO:
        # A small buffer: zipfile seeks about the archive, and each seek would refill a big one
        # (1 MB buffers made reading 300 packages' paths.json copy 1.5 GB). Big reads bypass it.
        return io.BufferedReader(_Slice(self.pack, self.offset, self.size))

    def verify(self) -> None:
        """Checked where the bytes are about to be used (then they are in the page cache for
        the extraction that follows), rather than in a separate pass over the whole pack."""
        if self.sha256 is None:
            return
        with self.open() as source:
            digest = hashlib.file_digest(source, "sha256").hexdigest()  # type: ignore[arg-type]
        if digest != self.sha256:
            raise self.corrupt()

    def corrupt(self) -> PackError:
        return PackError(
            f"{self.name} in {self.pack.name} is corrupt (sha256 mismatch)",
            "re-create or re-download the pack",
        )

    def copy_to(self, folder: Path) -> Path:
        self.verify()
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / self.name
        with self.open() as source, dest.open("wb") as out:
            shutil.copyfileobj(source, out, _CHUNK)
        return dest


Archive = Path | ArchiveSlice


class _Slice(io.RawIOBase):
    """``size`` bytes at ``offset`` of a file, seekable, read with ``pread``."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY)
        self._offset, self._size, self._pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), self._size - self._pos)
        if want <= 0:
            return 0
        got = os.preadv(self._fd, [view[:want]], self._offset + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def open_archive(archive: Archive) -> BinaryIO:
    return archive.open() if isinstance(archive, ArchiveSlice) else archive.open("rb")


def archive_size(archive: Archive) -> int:
    return archive.size if isinstance(archive, ArchiveSlice) else archive.stat().st_size


@contextmanager
def mapped(archive: Archive) -> Iterator[memoryview]:
    """The archive's bytes, mapped: hashed and decompressed where they lie, never copied."""
    if isinstance(archive, ArchiveSlice):
        path, offset, size = archive.pack, archive.offset, archive.size
    else:
        path, offset, size = archive, 0, archive.stat().st_size
    with path.open("rb") as source:
        if os.fstat(source.fileno()).st_size < offset + size:
            raise PackError(f"{archive.name} is cut short", "re-create or re-download the pack")
        if size == 0:
            yield memoryview(b"")
            return
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(
            source.fileno(), offset + size - start, access=mmap.ACCESS_READ, offset=start
        )
    whole = memoryview(mapped)
    view = whole[offset - start :]
    try:
        yield view
    finally:
        view.release()
        whole.release()
        with suppress(BufferError):  # a reader still holds it (an error is on its way up): GC's
            mapped.close()


def check_digest(archive: Archive, data: memoryview, digest: Any = None) -> None:
    """``digest``: a fresh sha256 object to use (a forked worker copies one, see `pack.writers`)."""
    if not isinstance(archive, ArchiveSlice) or archive.sha256 is None:
        return  # archives in the download cache were checked when they entered it
    digest = hashlib.sha256() if digest is None else digest
    digest.update(data)
    if digest.hexdigest() != archive.sha256:
        raise archive.corrupt()
