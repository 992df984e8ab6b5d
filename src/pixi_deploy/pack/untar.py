"""Write a conda payload (a zstd-compressed tar) into a folder, in this process.

Why not GNU tar or ``tarfile``: this is the hot loop of ``unpack``, and on the 2-vCPU machines we
measure on, piping the decompressed bytes into ``tar -x`` costs 1-2 s of CPU per GB in copies
and context switches (more than ``tar -x`` of the finished tree takes in all), and ``tarfile``
spends tens of microseconds of Python per member. Here zstd decompresses into one reused buffer
and ``os.write`` takes each file's bytes straight from it: every byte is copied once, into the
page cache. `pack.writers` runs it in forked worker processes, one per core (up to 8).

It handles what conda payloads hold: regular files, directories, symlinks and hard links, with
ustar, GNU or pax headers (long names included). Anything else, or anything unsafe (an absolute
name, a ``..`` component, a member beneath a symlink, a symlink the package does not declare),
raises `UnusualMember` before it is written, and the caller hands the package to ``tarfile``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Collection
from typing import TypeVar

import zstandard

from pixi_deploy.tarwriter import USTAR_HEADER

_T = TypeVar("_T")

BLOCK = 512
#: Decompressed bytes per read: big enough that the per-call overhead vanishes, small enough to
#: stay in the CPU's cache between decompression and the write that follows.
WINDOW = 1 << 20

_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
_FILE, _FILE_OLD, _CONTIGUOUS = b"0", b"\0", b"7"
_HARDLINK, _SYMLINK, _DIRECTORY = b"1", b"2", b"5"
_PAX, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"L", b"K"


class UnusualMember(Exception):
    """A member this fast path does not write; the caller uses ``tarfile`` for the package."""


def extract_payload(
    payload: memoryview,
    dest: str,
    *,
    declared_symlinks: Collection[str],
    all_symlinks: Collection[str],
    buffer: bytearray,
    symlinks_out: dict[str, str] | None = None,
) -> None:
    """Extract the zstd-compressed tar ``payload`` into the existing folder ``dest``.

    ``declared_symlinks``: the package's own symlinks (paths.json); any other symlink member is
    unusual. ``all_symlinks``: every symlink in the prefix being built; nothing may be written
    beneath one. ``buffer`` is reused across calls (one per writer). With ``symlinks_out``,
    symlinks are recorded there (path -> target) instead of made."""
    _Extraction(payload, dest, declared_symlinks, all_symlinks, buffer, symlinks_out).run()


class _Extraction:
    def __init__(
        self,
        payload: memoryview,
        dest: str,
        declared_symlinks: Collection[str],
        all_symlinks: Collection[str],
        buffer: bytearray,
        symlinks_out: dict[str, str] | None = None,
    ) -> None:
        self.symlinks_out = symlinks_out
        self.reader = zstandard.ZstdDecompressor().stream_reader(payload, read_size=WINDOW)
        self.dest = dest
        self.declared = declared_symlinks
        self.forbidden = all_symlinks
        self.safe_parents: set[str] = {""}
        self.buf = buffer
        self.view = memoryview(buffer)
        self.pos = self.end = 0
        self.umask = current_umask()

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

    def _skip(self, size: int) -> None:
        while size:
            if self.pos == self.end and not self._fill(1):
                raise UnusualMember("the payload ends in the middle of a member")
            n = min(size, self.end - self.pos)
            self.pos += n
            size -= n

    # -- the loop -------------------------------------------------------------------------------
    def run(self) -> None:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while self._fill(BLOCK):
            fields = USTAR_HEADER.unpack_from(self.buf, self.pos)
            self.pos += BLOCK
            raw_name, raw_mode, _, _, raw_size, raw_mtime, _, kind, raw_link, magic = fields[:10]
            if raw_name[:1] == b"\0":
                if self.buf.count(0, self.pos - BLOCK, self.pos) == BLOCK:
                    continue  # end-of-archive blocks (and the padding after them)
                raise UnusualMember("a header without a name")
            size = _number(raw_size)
            if kind in (_PAX, _GNU_LONGNAME, _GNU_LONGLINK):
                data = self._take(size)
                if kind == _PAX:
                    pax = _pax_records(data)
                elif kind == _GNU_LONGNAME:
                    long_name = _text(data.rstrip(b"\0"))
                else:
                    long_link = _text(data.rstrip(b"\0"))
                continue
            if magic == b"ustar\0":
                prefix = fields[15].split(b"\0", 1)[0]
                name = raw_name.split(b"\0", 1)[0]
                full = _text(prefix + b"/" + name if prefix else name)
            elif magic == b"ustar ":  # GNU
                full = _text(raw_name.split(b"\0", 1)[0])
            else:
                raise UnusualMember("not a ustar, GNU or pax header")
            name = _safe_name(pax.get("path") or long_name or full)
            link = pax.get("linkpath") or long_link or _text(raw_link.split(b"\0", 1)[0])
            if "size" in pax:
                size = int(pax["size"])
            mtime = float(pax["mtime"]) if "mtime" in pax else float(_number(raw_mtime))
            mode = _number(raw_mode) & 0o777
            pax, long_name, long_link = {}, None, None
            self._check_parents(name)
            path = f"{self.dest}/{name}"
            if kind in (_FILE, _FILE_OLD, _CONTIGUOUS):
                self._write_file(path, size, mode, mtime)
                self._skip(-size % BLOCK)
                continue
            self._skip((size + BLOCK - 1) & ~(BLOCK - 1))  # only files carry data we use
            if kind == _DIRECTORY:
                if mode & 0o700 != 0o700:
                    raise UnusualMember(f"the folder {name} would not be writable by its owner")
                os.makedirs(path, exist_ok=True)
                os.chmod(path, mode)
            elif kind == _SYMLINK:
                if name not in self.declared:
                    raise UnusualMember(f"{name} is a symlink that paths.json does not declare")
                if self.symlinks_out is not None:
                    self.symlinks_out[name] = link
                else:
                    _replace(path, functools.partial(os.symlink, link))
            elif kind == _HARDLINK:
                if self.symlinks_out is not None and _safe_name(link) in self.symlinks_out:
                    raise UnusualMember(f"{name} is a hard link to a symlink")
                self._check_parents(_safe_name(link))
                _replace(path, functools.partial(os.link, f"{self.dest}/{_safe_name(link)}"))
            else:
                raise UnusualMember(f"{name} is of tar type {kind!r}")

    def _check_parents(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent in self.safe_parents:
            return
        walk = parent
        while walk:
            if walk in self.forbidden:
                raise UnusualMember(f"{name} lies beneath the symlink {walk}")
            walk = walk.rpartition("/")[0]
        self.safe_parents.add(parent)

    def _write_file(self, path: str, size: int, mode: int, mtime: float) -> None:
        fd = _replace(path, lambda where: os.open(where, _WRITE_FLAGS, mode))
        try:
            left = size
            while left:
                if self.pos == self.end and not self._fill(1):
                    raise UnusualMember("the payload ends in the middle of a file")
                n = min(left, self.end - self.pos)
                written = os.write(fd, self.view[self.pos : self.pos + n])
                self.pos += written
                left -= written
            if mode & self.umask:
                os.fchmod(fd, mode)
            os.utime(fd, (mtime, mtime))  # .pyc files are checked against their source's mtime
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
            size = int(pax["size"])
            pos = data_at + ((size + BLOCK - 1) & ~(BLOCK - 1))
        pax, long_name = {}, None
        if member in wanted and kind in (_FILE, _FILE_OLD, _CONTIGUOUS):
            if data_at + size > len(tar):
                raise UnusualMember(f"{member} is cut short")
            found[member] = bytes(view[data_at : data_at + size])
    return found


def _replace(path: str, make: Callable[[str], _T]) -> _T:
    """``make(path)``, its folder made if missing, in place of what is there (as in tar, a
    later member of the same name wins). Still there after the unlink: another writer, for a
    package that owns the same path (rattler then installs them all), made it again."""
    try:
        return make(path)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with contextlib.suppress(FileExistsError):
            return make(path)
    except FileExistsError:
        pass
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        return make(path)
    except FileExistsError:
        raise UnusualMember(f"{path} is written by another package at the same time") from None


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
    if field[:1] in (b"\x80", b"\xff"):
        raise UnusualMember("a base-256 number (a member over 8 GB?)")
    digits = field.split(b"\0", 1)[0].strip()
    try:
        return int(digits, 8) if digits else 0
    except ValueError:
        raise UnusualMember(f"a malformed number {field!r} in a header") from None


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
            key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
            records[key.decode()] = _text(value)
            pos += length
    except ValueError:
        raise UnusualMember("a malformed pax header") from None
    return records


def _safe_name(name: str) -> str:
    stripped = name.removeprefix("./").rstrip("/")
    parts = stripped.split("/")
    if not stripped or name.startswith("/") or ".." in parts or "" in parts or "." in parts:
        raise UnusualMember(f"the member name {name!r} is not a plain relative path")
    return stripped
