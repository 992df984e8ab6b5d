"""Conda archives where they lie: a file in the download cache, or a slice of an uncompressed
pack (read in place, never copied out), read as streams in bounded chunks.

Why never ``mmap``: mapped pages count as resident memory (what ``/usr/bin/time``, Slurm and
HTCondor account), so mapping a 500 MB CUDA archive made unpack peak at 565 MB; read in 1 MB
chunks with ``pread``, the same bytes go through the page cache and the process stays small
whatever the package's size (issue 18).

An `ArchiveSlice` carries the sha256 the lock expects and is checked right where its bytes are
used (a cached file is a slice of itself): an archive replaced in the download cache after it
was fetched is caught by the deploy, image or installer that would use it, not only by ``pack``.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
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
    whole: bool = False  # the whole of ``pack`` (a cached file), not a slice of a pack

    @classmethod
    def of_file(cls, path: Path, sha256: str | None) -> ArchiveSlice:
        """A whole file (the download cache's copy of an archive), checked when it is used."""
        return cls(path, 0, path.stat().st_size, path.name, sha256, whole=True)

    def open(self) -> BinaryIO:
        # A small buffer: zipfile seeks about the archive, and each seek would refill a big one
        # (1 MB buffers made reading 300 packages' paths.json copy 1.5 GB). Big reads bypass it.
        return io.BufferedReader(_Slice(self.pack, self.offset, self.size))

    def verify(self) -> None:
        """Checked where the bytes are about to be used (then they are in the page cache for
        the extraction that follows), rather than in a separate pass over the whole pack."""
        if self.sha256 is None:
            return
        if self.whole and self.pack.stat().st_size != self.size:
            raise self.corrupt()
        with self.open() as source:
            digest = hashlib.file_digest(source, "sha256").hexdigest()  # type: ignore[arg-type]
        if digest != self.sha256:
            raise self.corrupt()

    def check(self, digest: Any, buffer: bytearray) -> None:
        """Like `verify`, hashing with ``digest`` (a fresh sha256 object: a forked worker copies
        one, see `pack.writers`) through ``buffer`` (reused: nothing is allocated per archive)."""
        if self.sha256 is None:
            return
        if self.whole and self.pack.stat().st_size != self.size:
            raise self.corrupt()
        view = memoryview(buffer)
        with _Slice(self.pack, self.offset, self.size) as source:
            while got := source.readinto(view):
                digest.update(view[:got])
        if digest.hexdigest() != self.sha256:
            raise self.corrupt()

    def corrupt(self) -> PackError:
        if self.whole:
            return PackError(
                f"{self.pack} does not match the sha256 in pixi.lock (changed after it was "
                "downloaded)",
                f"remove it (rm {self.pack}) and run the command again to fetch it afresh",
            )
        return PackError(
            f"{self.name} in {self.pack.name} is corrupt (sha256 mismatch)",
            "re-create or re-download the pack",
        )

    def local_file(self, folder: Path) -> Path:
        """A verified file of its own (for rattler): the cached file itself, or a copy."""
        if self.whole:
            self.verify()
            return self.pack
        return self.copy_to(folder)

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


def open_range(archive: Archive, offset: int, size: int) -> BinaryIO:
    """``size`` bytes at ``offset`` of the archive (its payload member, say) as a seekable
    stream, read in chunks: what the payload writers decompress from."""
    if isinstance(archive, ArchiveSlice):
        path, base, total = archive.pack, archive.offset, archive.size
    else:
        path, base, total = archive, 0, archive.stat().st_size
    if offset < 0 or size < 0 or offset + size > total:
        raise PackError(f"{archive.name} is cut short", "re-create or re-download the pack")
    return io.BufferedReader(_Slice(path, base + offset, size), _CHUNK)


def check_digest(archive: Archive, buffer: bytearray, digest: Any = None) -> None:
    """An `ArchiveSlice` against its sha256 (a bare path is trusted: tests and callers that
    verified it themselves)."""
    if isinstance(archive, ArchiveSlice):
        archive.check(hashlib.sha256() if digest is None else digest, buffer)
