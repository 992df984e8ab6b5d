"""Read a conda payload (a tar, usually zstd-compressed) member by member, and write it into a
folder, in this process.

Why not GNU tar or ``tarfile``: this is the hot loop of ``unpack``, and on the 2-vCPU machines we
measure on, piping the decompressed bytes into ``tar -x`` costs 1-2 s of CPU per GB in copies
and context switches (more than ``tar -x`` of the finished tree takes in all), and ``tarfile``
spends tens of microseconds of Python per member. Here zstd decompresses into one reused buffer
and ``os.write`` takes each file's bytes straight from it: every byte is copied once, into the
page cache. `pack.writers` runs it in forked worker processes, one per core (up to 8).

It is also where a hostile payload stops. Every member is checked before anything of it is
written, and written only through `pack.confined` (folder descriptors, no symlink followed):
names must be plain relative paths; only regular files, folders, symlinks that ``paths.json``
declares and hard links to an earlier file of the same payload are allowed (a device, a FIFO or
any other kind raises `UnsafeMember`); nothing may lie beneath a symlink; modes lose their
world-write and setuid/setgid/sticky bits, and owners are never taken from the archive. Symlinks
are recorded, not made: the caller makes them once every package is written and their targets
are checked. A payload this reader cannot parse raises `UnusualMember` (it is corrupt: its
sha256 matched, so the package itself is broken). No ``tarfile`` fallback: its extraction filter
could be bypassed on the Python versions we support (the 2025 filter CVEs).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Iterator
from typing import IO, NamedTuple, Protocol

import zstandard

from pixi_deploy.errors import PackError
from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember, check_name
from pixi_deploy.tarwriter import USTAR_HEADER

BLOCK = 512
#: Decompressed bytes per read: big enough that the per-call overhead vanishes, small enough to
#: stay in the CPU's cache between decompression and the write that follows.
WINDOW = 1 << 20

FILE, FILE_OLD, CONTIGUOUS = b"0", b"\0", b"7"
HARDLINK, SYMLINK, DIRECTORY = b"1", b"2", b"5"
_FILES = (FILE, FILE_OLD, CONTIGUOUS)
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"
_KINDS = {
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


class _Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


class Member(NamedTuple):
    kind: bytes
    name: str  # checked (`pack.confined.check_name`)
    link: str
    size: int
    mode: int
    mtime: float


def zstd_reader(payload: memoryview | IO[bytes]) -> _Readable:
    """A decompressing reader of a zstd payload, mapped in memory or read from a stream."""
    return zstandard.ZstdDecompressor().stream_reader(payload, read_size=WINDOW)


def extract_payload(
    payload: memoryview | IO[bytes],
    dest: str,
    *,
    declared_symlinks: Collection[str],
    all_symlinks: Collection[str] = (),
    buffer: bytearray,
    wanted: Collection[str] | None = None,
    reserved: Collection[str] = (),
) -> dict[str, str]:
    """Write the zstd-compressed tar ``payload`` (mapped, or a stream that is read once) into
    the existing folder ``dest``; returns its symlinks (name -> target), recorded, not made.

    ``declared_symlinks``: the package's own symlinks (paths.json); any other symlink member is
    refused. ``all_symlinks``: every symlink of the prefix being built; nothing may lie beneath
    one (nor beneath the package's own). ``buffer`` is reused across calls (one per writer).
    ``wanted``: write only these members (the rest is read and checked all the same).
    ``reserved``: top-level names no member may use (the remote store's own folders)."""
    rules = _Rules(declared_symlinks, all_symlinks, reserved)
    with ConfinedFolder(dest) as tree:
        reader = _Reader(zstd_reader(payload), buffer)
        extraction = _Extraction(rules, tree, reader, None if wanted is None else set(wanted))
        extraction.run(reader.members())
        if extraction.pending_links and wanted is not None:  # a wanted link to an unwanted file
            if not isinstance(payload, memoryview):
                raise UnusualMember("a hard link to a file that comes later in a streamed payload")
            reader = _Reader(zstd_reader(payload), buffer)
            targets = set(wanted) | set(extraction.pending_links.values())
            _Extraction(
                _Rules(declared_symlinks, all_symlinks, reserved), tree, reader, targets
            ).run(reader.members())
        return extraction.symlinks


def check_members(
    members: Iterable[Member], declared_symlinks: Collection[str], reserved: Collection[str] = ()
) -> dict[str, str]:
    """The same checks as `extract_payload`, on members already read, writing nothing; returns
    the symlinks. What `pack.guard` runs before rattler is given a package."""
    extraction = _Extraction(_Rules(declared_symlinks, (), reserved), None, None, set())
    extraction.run(members)
    return extraction.symlinks


def scan_payload(
    reader: _Readable, buffer: bytearray, capture: Collection[str] = (), limit: int = 1 << 26
) -> tuple[list[Member], dict[str, bytes]]:
    """Every member of an (already decompressing) tar stream, its name checked, nothing written;
    and the content of the regular files named in ``capture`` (each at most ``limit`` bytes)."""
    source = _Reader(reader, buffer)
    members: list[Member] = []
    captured: dict[str, bytes] = {}
    for member in source.members():
        members.append(member)
        if member.name in capture and member.kind in _FILES:
            if member.size > limit:
                raise UnusualMember(f"{member.name} is larger than {limit} bytes")
            captured[member.name] = source.read_data(member.size)
    return members, captured


class _Reader:
    """Headers and data of a tar stream read into one reused buffer."""

    def __init__(self, reader: _Readable, buffer: bytearray) -> None:
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


class _Rules:
    """What a payload may hold, whoever writes it (see the module's docstring)."""

    def __init__(
        self, declared: Collection[str], symlinks: Collection[str], reserved: Collection[str]
    ) -> None:
        self.declared = frozenset(declared)
        self.forbidden = self.declared | frozenset(symlinks)  # nothing beneath these
        self.reserved = frozenset(reserved)


class _Extraction:
    """Checks each member against the rules, then writes it into ``tree`` if it is wanted
    (``wanted`` None: every member; with no ``tree``, nothing is written)."""

    def __init__(
        self,
        rules: _Rules,
        tree: ConfinedFolder | None,
        reader: _Reader | None,
        wanted: set[str] | None,
    ) -> None:
        self.rules = rules
        self.tree = tree
        self.reader = reader
        self.wanted = wanted
        self.safe_parents: set[str] = {""}
        self.files: set[str] = set()  # regular files seen so far: what hard links may name
        self.written: set[str] = set()
        self.symlinks: dict[str, str] = {}
        self.pending_links: dict[str, str] = {}
        self.umask = current_umask()

    def run(self, members: Iterable[Member]) -> None:
        wanted, tree = self.wanted, self.tree
        for member in members:
            name = member.name
            self._check_place(name)
            kind = member.kind
            if kind in _FILES:
                self.files.add(name)
                self.symlinks.pop(name, None)  # a later member of the same name wins
                if wanted is None or name in wanted:
                    self._write_file(member)
                    self.written.add(name)
            elif kind == DIRECTORY:
                if wanted is None and tree is not None:
                    tree.make_folder(name, member.mode)
            elif kind == SYMLINK:
                if name not in self.rules.declared:
                    raise UnsafeMember(f"{name} is a symlink that paths.json does not declare")
                if not member.link or "\0" in member.link:
                    raise UnsafeMember(f"the symlink {name} has no usable target")
                self.files.discard(name)
                self.symlinks[name] = member.link
            elif kind == HARDLINK:
                self._hardlink(name, member.link)
            else:
                what = _KINDS.get(kind, f"member of tar type {kind!r}")
                raise UnsafeMember(f"{name} is a {what}, which no package may hold")

    def _hardlink(self, name: str, link: str) -> None:
        target = check_name(link)
        if target not in self.files:
            raise UnsafeMember(
                f"{name} is a hard link to {link!r}, which is not an earlier file of the "
                "same package"
            )
        self.files.add(name)
        if self.wanted is not None and name not in self.wanted:
            return
        if target in self.written and self.tree is not None:
            self.tree.hardlink(name, target)
            self.written.add(name)
        elif self.tree is not None:
            self.pending_links[name] = target

    def _check_place(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent in self.safe_parents:
            return
        top = name.partition("/")[0]
        if top in self.rules.reserved:
            raise UnsafeMember(f"{name} uses the reserved name {top}")
        walk = parent
        forbidden = self.rules.forbidden
        while walk:
            if walk in forbidden or walk in self.symlinks:
                raise UnsafeMember(f"{name} lies beneath the symlink {walk}")
            walk = walk.rpartition("/")[0]
        self.safe_parents.add(parent)

    def _write_file(self, member: Member) -> None:
        assert self.tree is not None and self.reader is not None
        mode = member.mode & 0o777
        fd = self.tree.create_file(member.name, mode)
        try:
            self.reader.write_to(fd, member.size)
            if mode & self.umask:
                os.fchmod(fd, mode & 0o775)  # exact modes, as rattler gives them
            os.utime(fd, (member.mtime, member.mtime))  # .pyc files check their source's mtime
        finally:
            os.close(fd)


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
        if member in wanted and kind in _FILES:
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


def current_umask() -> int:
    """Read without setting it: ``os.umask`` is process-wide and threads may be creating files."""
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


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
