"""Write a conda payload (a tar, usually zstd-compressed) into a folder, in this process, member
by member as `pack.tarstream` reads it.

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
from collections.abc import Collection, Iterable
from typing import IO

from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember, check_name
from pixi_deploy.pack.tarstream import (
    DIRECTORY,
    FILES,
    HARDLINK,
    KINDS,
    SYMLINK,
    WINDOW,
    Member,
    TarStream,
    UnusualMember,
    read_bounded,
    read_members,
    scan_payload,
    zstd_reader,
)

__all__ = [
    "WINDOW",
    "UnusualMember",
    "check_members",
    "current_umask",
    "extract_payload",
    "read_bounded",
    "read_members",
    "scan_payload",
    "zstd_reader",
]


def extract_payload(
    payload: memoryview | IO[bytes],
    dest: str,
    *,
    declared_symlinks: Collection[str],
    all_symlinks: Collection[str] = (),
    buffer: bytearray,
    wanted: Collection[str] | None = None,
    reserved: Collection[str] = (),
    stop_early: bool = False,
    folders_out: set[str] | None = None,
) -> dict[str, str]:
    """Write the zstd-compressed tar ``payload`` (in memory, or a stream: read once, and a second time
    from its start for a hard link to an unwanted file, when it is seekable) into
    the existing folder ``dest``; returns its symlinks (name -> target), recorded, not made.

    ``declared_symlinks``: the package's own symlinks (paths.json); any other symlink member is
    refused. ``all_symlinks``: every symlink of the prefix being built; nothing may lie beneath
    one (nor beneath the package's own). ``buffer`` is reused across calls (one per writer).
    ``wanted``: write only these members (the rest is read and checked all the same).
    ``reserved``: top-level names no member may use (the remote store's own folders).
    ``stop_early``: stop reading once every wanted member is written (the rest is then NOT
    checked: only for a payload known to pass, see `pack.verdicts`). ``folders_out`` receives
    the folder of every member read."""
    rules = _Rules(declared_symlinks, all_symlinks, reserved)
    with ConfinedFolder(dest) as tree:
        reader = TarStream(zstd_reader(payload), buffer)
        extraction = _Extraction(rules, tree, reader, None if wanted is None else set(wanted))
        extraction.stop_early = stop_early and wanted is not None
        extraction.run(reader.members())
        if folders_out is not None:
            folders_out.update(extraction.safe_parents - {""})
        if extraction.pending_links and wanted is not None:  # a wanted link to an unwanted file
            if not isinstance(payload, memoryview):
                if not payload.seekable():
                    raise UnusualMember(
                        "a hard link to a file that comes later in a streamed payload"
                    )
                payload.seek(0)
            reader = TarStream(zstd_reader(payload), buffer)
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
        reader: TarStream | None,
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
        self.stop_early = False

    def run(self, members: Iterable[Member]) -> None:
        wanted, tree = self.wanted, self.tree
        remaining = set(wanted) if self.stop_early and wanted is not None else None
        if remaining is not None and not remaining:
            return
        for member in members:
            name = member.name
            self._check_place(name)
            kind = member.kind
            if kind in FILES:
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
                what = KINDS.get(kind, f"member of tar type {kind!r}")
                raise UnsafeMember(f"{name} is a {what}, which no package may hold")
            if remaining is not None:
                remaining.discard(name)
                if not remaining and not self.pending_links:
                    return  # every wanted member is out

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
