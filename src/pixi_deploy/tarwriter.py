"""A small, fast, reproducible tar writer.

Headers come from :mod:`tarfile`; file payloads go through ``os.sendfile`` when the output is a
real file, so gigabytes of package data are copied by the kernel rather than through Python.
Every entry gets mtime 0, uid/gid 0 and no user names, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import os
import struct
import tarfile
from pathlib import Path
from typing import BinaryIO

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class TarWriter:
    def __init__(self, out: BinaryIO, *, use_sendfile: bool = True) -> None:
        self.out = out
        self.written = 0
        self._fd: int | None = None
        if use_sendfile:
            try:
                self._fd = out.fileno()
            except (AttributeError, OSError, io.UnsupportedOperation):
                self._fd = None

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._write(_header(name, tarfile.REGTYPE, len(data), mode))
        self._write(data)
        self._pad(len(data))

    def add_file(
        self, name: str, path: Path, size: int, mode: int = 0o644, *, offset: int = 0
    ) -> None:
        """``size`` bytes of ``path`` from ``offset`` (a member inside a bigger file)."""
        self._write(_header(name, tarfile.REGTYPE, size, mode))
        with path.open("rb") as source:
            if self._fd is not None:
                self.out.flush()
                sent = 0
                while sent < size:
                    n = os.sendfile(self._fd, source.fileno(), offset + sent, size - sent)
                    if n == 0:
                        raise OSError(f"{path} shrank while it was being written")
                    sent += n
                self.out.seek(0, io.SEEK_END)
                self.written += size
            else:
                source.seek(offset)
                remaining = size
                while remaining:
                    chunk = source.read(min(1 << 20, remaining))
                    if not chunk:
                        raise OSError(f"{path} shrank while it was being written")
                    self._write(chunk)
                    remaining -= len(chunk)
        self._pad(size)

    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._write(_header(name.rstrip("/") + "/", tarfile.DIRTYPE, 0, mode))

    def add_hardlink(self, name: str, target: str) -> None:
        """``name`` as another name of the member ``target``, written earlier in the same
        stream (or already on disk where the stream is extracted)."""
        self._write(hardlink_header(name, target))

    def add_symlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type = tarfile.SYMTYPE
        info.linkname = target
        info.mode = 0o777
        self._write(_finish(info))

    def close(self) -> None:
        end = BLOCK * 2
        self._write(b"\0" * (end + (-(self.written + end) % RECORD)))

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.written += len(data)

    def _pad(self, size: int) -> None:
        pad = -size % BLOCK
        if pad:
            self._write(b"\0" * pad)


def member_length(name: str, size: int) -> int:
    """Bytes `TarWriter.add_bytes` / `add_file` write for a regular member: its header (a pax
    header first for long names), its data and the padding after it."""
    return len(_header(name, tarfile.REGTYPE, size, 0o644)) + size + (-size % BLOCK)


def archive_length(members_length: int) -> int:
    """Bytes of a whole archive whose members take ``members_length``: `TarWriter.close`
    adds the end-of-archive blocks and pads to a whole record."""
    end = BLOCK * 2
    return members_length + end + (-(members_length + end) % RECORD)


#: A ustar header block: name mode uid gid size mtime chksum typeflag linkname magic version
#: uname gname devmajor devminor prefix, then padding to 512 bytes (read by `pack.untar` too).
USTAR_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


def hardlink_header(name: str, target: str) -> bytes:
    """A hard-link member's header, built directly: ``tarfile`` takes ~40 us per header, and a
    deploy writes one per shared file of every package (tens of thousands). Names that do not
    fit a ustar header go through ``tarfile`` (pax)."""
    raw_name, raw_target = name.encode(), target.encode()
    prefix, _, short = raw_name.rpartition(b"/") if len(raw_name) > 100 else (b"", b"", raw_name)
    if len(short) > 100 or len(prefix) > 155 or len(raw_target) > 100 or not short:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, target, 0o644
        return _finish(info)
    fields = [
        short, b"0000644", b"0000000", b"0000000", b"00000000000", b"00000000000", b" " * 8,
        tarfile.LNKTYPE, raw_target, b"ustar", b"00", b"", b"", b"", b"", prefix,
    ]  # fmt: skip
    header = bytearray(USTAR_HEADER.pack(*fields))
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


def _header(name: str, kind: bytes, size: int, mode: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    info.mode = mode
    return _finish(info)


def _finish(info: tarfile.TarInfo) -> bytes:
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT)
