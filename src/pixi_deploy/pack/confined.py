"""The one way an untrusted name becomes a file: resolved inside a folder, never through a symlink.

Packages and packs name the files to write: tar members, ``paths.json`` entries, pack members.
A name such as ``../x`` or ``/etc/x``, or one beneath a symlink an earlier member made, would
write outside the environment; as root, anywhere. Checking names as strings is not enough once
the tree holds symlinks, so every write goes through folder descriptors here: each folder of a
name is opened relative to its parent with ``O_NOFOLLOW`` (``openat``), starting at the root, and
the last step is an ``...at`` call relative to the last folder. A symlink on the way, a file where
a folder should be, or a name that is not a plain relative path raises `UnsafeMember` before
anything is written.

Cheap enough for the hot loop of ``unpack``: a name is checked with a few string operations, and
folder descriptors are kept open while a tree is written, so a file costs the same ``open`` it
would cost anyway (relative to a descriptor instead of by path).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from pathlib import Path
from types import TracebackType

from pixi_deploy.errors import PackError

#: Longest file-name component Linux file systems accept (bytes).
NAME_MAX = 255
#: No world-writable files or folders, and no setuid, setgid or sticky bits, whatever the
#: archive says (group write stays: conda-forge's files are 0664, and rattler keeps that).
MODE_MASK = 0o775
#: Folder descriptors kept open at once; a tree with more folders re-opens them as needed.
MAX_OPEN_FOLDERS = 256

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeMember(PackError):
    """A name or member that would reach outside its folder, or that no package may hold."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(
            message,
            hint or "the package or pack is broken or hostile; nothing of it was installed",
        )


def check_name(name: str) -> str:
    """``name`` as a plain relative path (a leading ``./`` and trailing ``/`` dropped), or
    `UnsafeMember`: absolute, ``..`` or ``.`` components, empty components, control characters
    (a newline breaks every list of names downstream) and components over `NAME_MAX` bytes."""
    stripped = name
    while stripped.startswith("./"):
        stripped = stripped[2:]
    stripped = stripped.rstrip("/")
    if not stripped or name.startswith("/") or not stripped.isprintable():
        raise UnsafeMember(f"the name {name!r} is not a plain relative path")
    parts = stripped.split("/")
    if ".." in parts or "" in parts or "." in parts:
        raise UnsafeMember(f"the name {name!r} is not a plain relative path")
    if len(stripped) > NAME_MAX // 4:  # a character is at most 4 bytes: only then look closer
        for part in parts:
            if (
                len(part) > NAME_MAX // 4
                and len(part.encode("utf-8", "surrogateescape")) > NAME_MAX
            ):
                raise UnsafeMember(
                    f"the name {name[:80]!r}... has a component over {NAME_MAX} bytes, "
                    "which no Linux file system stores"
                )
    return stripped


def is_beneath(name: str, folders: set[str] | frozenset[str]) -> str | None:
    """The first of ``folders`` that ``name`` lies beneath (``name`` itself excluded), if any."""
    parent = name.rpartition("/")[0]
    while parent:
        if parent in folders:
            return parent
        parent = parent.rpartition("/")[0]
    return None


def resolve_link(
    link: str, target: str, symlinks: dict[str, str], final: str | None = None
) -> str | None:
    """Where the symlink ``link`` (a checked name) pointing at ``target`` ends up, as a name
    relative to the root, following ``symlinks`` (name -> target) the way the kernel would;
    None when it leaves the root. An absolute ``target`` is inside only when it lies under
    ``final``, the path the tree will have once installed."""
    if target.startswith("/"):
        if final is None:
            return None
        base = final.rstrip("/")
        if target != base and not target.startswith(base + "/"):
            return None
        parts: list[str] = []
        pending = [p for p in target[len(base) :].split("/") if p][::-1]
    else:
        parts = link.split("/")[:-1]
        pending = [p for p in target.split("/") if p][::-1]
    hops = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
            continue
        here = "/".join([*parts, part])
        through = symlinks.get(here)
        if through is None:
            parts.append(part)
            continue
        hops += 1
        if hops > 40:  # the kernel's own limit (ELOOP)
            return None
        if through.startswith("/"):
            if final is None:
                return None
            base = final.rstrip("/")
            if through != base and not through.startswith(base + "/"):
                return None
            parts = []
            pending += [p for p in through[len(base) :].split("/") if p][::-1]
        else:
            pending += [p for p in through.split("/") if p][::-1]
    return "/".join(parts)


class ConfinedFolder:
    """Writes and reads beneath ``root`` by checked names, through folder descriptors.

    ``root`` itself is trusted (the caller made it); everything beneath it is not."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._folders: dict[str, int] = {"": self._root_fd}

    def __enter__(self) -> ConfinedFolder:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._folders.values():
            os.close(fd)
        self._folders = {}

    # -- folders ------------------------------------------------------------------------------
    def folder(self, name: str, *, create: bool = True) -> int:
        """The descriptor of the folder ``name`` (a checked name, "" for the root), made when
        missing. `UnsafeMember` when a step is a symlink or not a folder."""
        fd = self._folders.get(name)
        if fd is not None:
            return fd
        if len(self._folders) >= MAX_OPEN_FOLDERS:
            self._forget_folders()
        parts = name.split("/")
        known = len(parts) - 1  # the longest ancestor already open
        while known and "/".join(parts[:known]) not in self._folders:
            known -= 1
        fd = self._folders["/".join(parts[:known])]
        for depth in range(known + 1, len(parts) + 1):
            fd = self._open_step(fd, parts[depth - 1], "/".join(parts[:depth]), create)
            self._folders["/".join(parts[:depth])] = fd
        return fd

    def _open_step(self, parent: int, part: str, name: str, create: bool) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
        except OSError as error:
            raise self._not_a_folder(name, error) from None
        with contextlib.suppress(FileExistsError):  # another writer made it meanwhile
            os.mkdir(part, 0o755, dir_fd=parent)
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=parent)
        except OSError as error:
            raise self._not_a_folder(name, error) from None

    @staticmethod
    def _not_a_folder(name: str, error: OSError) -> Exception:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            return UnsafeMember(
                f"{name} is a symlink or a file, so nothing may be written beneath it"
            )
        return error

    def _forget_folders(self) -> None:
        for name, fd in list(self._folders.items()):
            if name:
                os.close(fd)
        self._folders = {"": self._root_fd}

    def locate(self, name: str, *, create: bool = True) -> tuple[int, str]:
        """(descriptor of the folder holding ``name``, its last component); the folders made
        unless ``create`` is False (then FileNotFoundError when one is missing)."""
        parent, _, base = name.rpartition("/")
        return self.folder(parent, create=create), base

    # -- writing ------------------------------------------------------------------------------
    def make_folder(self, name: str, mode: int) -> None:
        fd = self.folder(name)
        os.fchmod(fd, (mode | 0o700) & MODE_MASK)  # its owner must be able to fill it

    def create_file(self, name: str, mode: int) -> int:
        """A new file's write descriptor, in place of a non-folder already there (as in tar, a
        later member of the same name wins). Its mode is exactly ``mode`` (masked)."""
        where, base = self.locate(name)
        mode &= MODE_MASK
        try:
            fd = os.open(base, _NEW_FILE, mode, dir_fd=where)
        except FileExistsError:
            self._unlink_existing(where, base, name)
            try:
                fd = os.open(base, _NEW_FILE, mode, dir_fd=where)
            except FileExistsError:
                raise UnsafeMember(
                    f"{name} is written by another package at the same time"
                ) from None
        return fd

    def symlink(self, name: str, target: str) -> None:
        where, base = self.locate(name)
        try:
            os.symlink(target, base, dir_fd=where)
        except FileExistsError:
            self._unlink_existing(where, base, name)
            os.symlink(target, base, dir_fd=where)

    def hardlink(self, name: str, existing: str) -> None:
        """``name`` as a second name of the file ``existing`` (never of what a symlink names)."""
        source_dir, source = self.locate(existing)
        where, base = self.locate(name)
        try:
            os.link(source, base, src_dir_fd=source_dir, dst_dir_fd=where, follow_symlinks=False)
        except FileExistsError:
            self._unlink_existing(where, base, name)
            os.link(source, base, src_dir_fd=source_dir, dst_dir_fd=where, follow_symlinks=False)

    def _unlink_existing(self, where: int, base: str, name: str) -> None:
        try:
            os.unlink(base, dir_fd=where)
        except FileNotFoundError:
            pass
        except (IsADirectoryError, PermissionError):
            raise UnsafeMember(f"{name} would replace a folder") from None

    def remove(self, name: str) -> None:
        """Remove the file or symlink ``name`` if it is there (never a folder)."""
        try:
            where, base = self.locate(name, create=False)
        except FileNotFoundError:
            return
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
            os.unlink(base, dir_fd=where)

    def replace_bytes(self, name: str, data: bytes) -> None:
        """Give the existing file ``name`` new content (a new inode: a hard link elsewhere to the
        old one is left as it was), keeping its mode."""
        where, base = self.locate(name)
        mode = self.lstat(name).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeMember(f"{name} is not a regular file")
        temporary = f".{base[: NAME_MAX - 40]}.pixi-deploy-{os.getpid()}"
        fd = os.open(temporary, _NEW_FILE, 0o600, dir_fd=where)
        try:
            with os.fdopen(fd, "wb", closefd=False) as out:
                out.write(data)
            os.fchmod(fd, stat.S_IMODE(mode) & MODE_MASK)
        except BaseException:
            os.close(fd)
            os.unlink(temporary, dir_fd=where)
            raise
        os.close(fd)
        os.replace(temporary, base, src_dir_fd=where, dst_dir_fd=where)

    # -- reading ------------------------------------------------------------------------------
    def lstat(self, name: str) -> os.stat_result:
        where, base = self.locate(name, create=False)
        return os.stat(base, dir_fd=where, follow_symlinks=False)

    def read_bytes(self, name: str) -> bytes:
        """A regular file's content (`UnsafeMember` for a symlink, device or folder)."""
        where, base = self.locate(name, create=False)
        try:
            fd = os.open(base, _READ_FILE, dir_fd=where)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise UnsafeMember(f"{name} is a symlink, not a file") from None
            raise
        with os.fdopen(fd, "rb") as source:
            if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
                raise UnsafeMember(f"{name} is not a regular file")
            return source.read()

    def readlink(self, name: str) -> str:
        where, base = self.locate(name, create=False)
        return os.readlink(base, dir_fd=where)


def extract_tar(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract an untrusted tar (an sdist, an OCI archive) into the existing folder ``dest``.

    ``tarfile`` only parses here: its own extraction filter could be bypassed before Python
    3.11.13 / 3.12.11 / 3.13.4 (the 2025 filter CVEs), so every member is written through
    `ConfinedFolder` by the same rules as a conda payload: regular files, folders, hard links
    to an earlier file, symlinks that stay inside (made last); anything else is refused."""
    symlinks: dict[str, str] = {}
    files: set[str] = set()
    with ConfinedFolder(dest) as tree:
        for member in tar:
            name = check_name(member.name)
            below = is_beneath(name, frozenset(symlinks))
            if below is not None:
                raise UnsafeMember(f"{name} lies beneath the symlink {below}")
            if member.isdir():
                tree.make_folder(name, member.mode)
            elif member.isfile():
                source = tar.extractfile(member)
                assert source is not None
                fd = tree.create_file(name, member.mode & 0o777)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
                files.add(name)
            elif member.islnk():
                target = check_name(member.linkname)
                if target not in files:
                    raise UnsafeMember(f"{name} is a hard link to {target!r}, not an earlier file")
                tree.hardlink(name, target)
                files.add(name)
            elif member.issym():
                symlinks[name] = member.linkname
            else:
                raise UnsafeMember(f"{name} is not a file, folder or link")
        for name, target in symlinks.items():
            if resolve_link(name, target, symlinks) is None:
                raise UnsafeMember(f"the symlink {name} -> {target} points outside {dest.name}")
            tree.symlink(name, target)
