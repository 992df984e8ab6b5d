"""Read a tar stream (a conda payload, usually zstd-compressed) member by member, into one
reused buffer: ustar, GNU and pax headers (long names included) and the old v7 format, numbers
in octal or GNU base-256.

Only reading happens here; what a member may be, and writing it, is `pack.untar`'s. Why not
``tarfile``: this is the hot loop of ``unpack``, and ``tarfile`` spends tens of microseconds of
Python per member (see `pack.untar`). A stream this reader cannot parse raises `UnusualMember`.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator
from typing import IO, NamedTuple, Protocol

import zstandard

from pixi_deploy.errors import PackError
from pixi_deploy.pack.confined import check_name
from pixi_deploy.tarwriter import USTAR_HEADER

BLOCK = 512
#: Decompressed bytes per read: big enough that the per-call overhead vanishes, small enough to
#: stay in the CPU's cache between decompression and the write that follows.
WINDOW = 1 << 20

FILE, FILE_OLD, CONTIGUOUS = b"0", b"\0", b"7"
HARDLINK, SYMLINK, DIRECTORY = b"1", b"2", b"5"
FILES = (FILE, FILE_OLD, CONTIGUOUS)
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
KINDS = {
    b"3": "character device",
    b"4": "block device",
    b"6": "FIFO",
    b"S": "sparse file",
    b"V": "volume header",
    b"M": "multi-volume continuation",
}


class UnusualMember(PackError):
    """The payload cannot be read: cut short, or a header this reader does not parse."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message, hint or "the package is corrupt; re-download or rebuild it")


class Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class Member(NamedTuple):
    kind: bytes
    name: str  # checked (`pack.confined.check_name`)
    link: str
    size: int
    mode: int
    mtime: float


def zstd_reader(payload: memoryview | IO[bytes]) -> Readable:
    """A decompressing reader of a zstd payload, mapped in memory or read from a stream."""
    return zstandard.ZstdDecompressor().stream_reader(payload, read_size=WINDOW)


def scan_payload(
    reader: Readable, buffer: bytearray, capture: Collection[str] = (), limit: int = 1 << 26
) -> tuple[list[Member], dict[str, bytes]]:
    """Every member of an (already decompressing) tar stream, its name checked, nothing written;
    and the content of the regular files named in ``capture`` (each at most ``limit`` bytes)."""
    source = TarStream(reader, buffer)
    members: list[Member] = []
    captured: dict[str, bytes] = {}
    for member in source.members():
        members.append(member)
        if member.name in capture and member.kind in FILES:
            if member.size > limit:
                raise UnusualMember(f"{member.name} is larger than {limit} bytes")
            captured[member.name] = source.read_data(member.size)
    return members, captured


class TarStream:
    """Headers and data of a tar stream read into one reused buffer."""

    def __init__(self, reader: Readable, buffer: bytearray) -> None:
        self.reader = reader
        self.buf = buffer
        self.view = memoryview(buffer)
        self.pos = self.end = 0
        self.left = 0  # data bytes of the current member not consumed yet, padding included

    # -- reading --------------------------------------------------------------------------------
    def _fill(self, want: int) -> bool:
        """At least ``want`` bytes between pos and end; False at a clean end of the stream."""
        if self.pos == self.end:
            self.pos = self.end = 0
        elif len(self.buf) - self.pos < want:  # keep the unread rest, at the front
            rest = self.end - self.pos
            self.buf[:rest] = self.view[self.pos : self.end]
            self.pos, self.end = 0, rest
        while self.end - self.pos < want:
            got = self.reader.readinto(self.view[self.end :])
            if not got:
                if self.end == self.pos:
                    return False
                raise UnusualMember("the payload ends in the middle of a member")
            self.end += got
        return True

    def _take(self, size: int) -> bytes:
        padded = (size + BLOCK - 1) & ~(BLOCK - 1)
        if padded > len(self.buf) // 2:
            raise UnusualMember("an extended header is too long")
        if not self._fill(padded):
            raise UnusualMember("the payload ends in an extended header")
        data = bytes(self.view[self.pos : self.pos + size])
        self.pos += padded
        return data

    def skip(self, size: int) -> None:
        while size:
            if self.pos == self.end and not self._fill(1):
                raise UnusualMember("the payload ends in the middle of a member")
            n = min(size, self.end - self.pos)
            self.pos += n
            size -= n

    def read_data(self, size: int) -> bytes:
        """The current member's ``size`` data bytes (a small file)."""
        parts = []
        left = size
        while left:
            if self.pos == self.end and not self._fill(1):
                raise UnusualMember("the payload ends in the middle of a file")
            n = min(left, self.end - self.pos)
            parts.append(bytes(self.view[self.pos : self.pos + n]))
            self.pos += n
            left -= n
        self.left -= size
        return b"".join(parts)

    def write_to(self, fd: int, size: int) -> None:
        """The current member's ``size`` data bytes into ``fd``."""
        left = size
        while left:
            if self.pos == self.end and not self._fill(1):
                raise UnusualMember("the payload ends in the middle of a file")
            n = min(left, self.end - self.pos)
            written = os.write(fd, self.view[self.pos : self.pos + n])
            self.pos += written
            left -= written
        self.left -= size

    # -- headers --------------------------------------------------------------------------------
    def members(self) -> Iterator[Member]:
        """Each member once its header is read; its data is skipped when the loop resumes,
        unless `write_to` consumed it."""
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            if self.left:
                self.skip(self.left)
                self.left = 0
            if not self._fill(BLOCK):
                return
            fields = USTAR_HEADER.unpack_from(self.buf, self.pos)
            self.pos += BLOCK
            raw_name, raw_mode, _, _, raw_size, raw_mtime, _, kind, raw_link, magic = fields[:10]
            if raw_name[:1] == b"\0":
                if self.buf.count(0, self.pos - BLOCK, self.pos) == BLOCK:
                    continue  # end-of-archive blocks (and the padding after them)
                raise UnusualMember("a header without a name")
            size = _number(raw_size)
            if kind in (_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK):
                data = self._take(size)
                if kind == _PAX:
                    pax = _pax_records(data)
                elif kind == _GNU_LONGNAME:
                    long_name = _text(data.rstrip(b"\0"))
                elif kind == _GNU_LONGLINK:
                    long_link = _text(data.rstrip(b"\0"))
                continue  # a global pax header sets nothing we use
            if magic == b"ustar\0":
                prefix = fields[15].split(b"\0", 1)[0]
                name = raw_name.split(b"\0", 1)[0]
                full = _text(prefix + b"/" + name if prefix else name)
            elif magic in (b"ustar ", b"\0\0\0\0\0\0"):  # GNU, or the old v7 format
                full = _text(raw_name.split(b"\0", 1)[0])
            else:
                raise UnusualMember("not a ustar, GNU, pax or v7 tar header")
            name = check_name(pax.get("path") or long_name or full)
            link = pax.get("linkpath") or long_link or _text(raw_link.split(b"\0", 1)[0])
            if "size" in pax:
                size = _pax_number(pax["size"])
            mtime = float(pax["mtime"]) if "mtime" in pax else float(_number(raw_mtime))
            pax, long_name, long_link = {}, None, None
            self.left = (size + BLOCK - 1) & ~(BLOCK - 1)
            yield Member(kind, name, link, size, _number(raw_mode) & 0o7777, mtime)


def read_members(tar: bytes, wanted: Collection[str]) -> dict[str, bytes]:
    """The regular files named in ``wanted`` from an uncompressed tar held in memory (a
    package's small info section: paths.json, index.json), stopping once all are found."""
    found: dict[str, bytes] = {}
    pos, pax, long_name = 0, {}, None
    view = memoryview(tar)
    while pos + BLOCK <= len(tar) and len(found) < len(wanted):
        fields = USTAR_HEADER.unpack_from(tar, pos)
        pos += BLOCK
        raw_name, _, _, _, raw_size, _, _, kind, _, magic = fields[:10]
        if raw_name[:1] == b"\0":
            continue
        size = _number(raw_size)
        data_at, pos = pos, pos + ((size + BLOCK - 1) & ~(BLOCK - 1))
        if kind == _PAX:
            pax = _pax_records(bytes(view[data_at : data_at + size]))
            continue
        if kind == _GNU_LONGNAME:
            long_name = _text(bytes(view[data_at : data_at + size]).rstrip(b"\0"))
            continue
        name = raw_name.split(b"\0", 1)[0]
        if magic == b"ustar\0" and fields[15][:1] != b"\0":
            name = fields[15].split(b"\0", 1)[0] + b"/" + name
        member = pax.get("path") or long_name or _text(name)
        if "size" in pax:
            size = _pax_number(pax["size"])
            pos = data_at + ((size + BLOCK - 1) & ~(BLOCK - 1))
        pax, long_name = {}, None
        if member in wanted and kind in FILES:
            if data_at + size > len(tar):
                raise UnusualMember(f"{member} is cut short")
            found[member] = bytes(view[data_at : data_at + size])
    return found


def read_bounded(source: IO[bytes], limit: int) -> bytes:
    """All of ``source``, or `UnusualMember` once it exceeds ``limit`` bytes (a small member
    that decompresses to gigabytes)."""
    parts: list[bytes] = []
    total = 0
    while chunk := source.read(min(WINDOW, limit + 1 - total)):
        parts.append(chunk)
        total += len(chunk)
        if total > limit:
            raise UnusualMember(f"a member is larger than the {limit} bytes allowed for it")
    return b"".join(parts)


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # GNU base-256, for numbers octal cannot hold
        if field[:1] == b"\xff":
            raise UnusualMember("a negative number in a tar header")
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise UnusualMember(f"a malformed number {field!r} in a tar header") from None


def _pax_number(text: str) -> int:
    if not text.isdigit():
        raise UnusualMember(f"a malformed size {text!r} in a pax header")
    return int(text)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``"%d %s=%s\\n"`` records (POSIX.1-2001); only path, linkpath, size and mtime matter."""
    records: dict[str, str] = {}
    pos = 0
    try:
        while pos < len(data):
            space = data.index(b" ", pos)
            length = int(data[pos:space])
            if length <= 0:
                raise ValueError("a pax record without length")
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            records[key.decode()] = _text(value)
            pos += length
    except (ValueError, UnicodeDecodeError):
        raise UnusualMember("a malformed pax header") from None
    return records
