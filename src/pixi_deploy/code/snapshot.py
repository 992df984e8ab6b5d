"""A code snapshot: the workspace's chosen files, each named by its content, and one hash.

Every regular file becomes an *object key*: the sha256 of its content, with ``x`` appended when
it is executable (hard links share their mode, so an executable and a plain copy of the same
bytes are two objects). Symbolic links are kept as links. The snapshot's hash covers the sorted
list of (path, key or link target), so the same files give the same hash on every machine, and
any change of content, name, mode or set of files gives another.

Hashing is what a resubmit pays for locally, so keys are remembered per workspace in
``CACHE/code/index/`` by (size, mtime, ctime, inode) and only files whose stat changed are read
again (as git's index does; a file changed within two seconds of the last look is always read
again, since a coarse clock could hide the change). A file that changes or disappears while it
is read is an error, not a half-read object.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from pixi_deploy.code.select import CodeRules, select_files
from pixi_deploy.errors import WorkspaceError

SHORT = 16
_RACY_NS = 2_000_000_000


@dataclass(frozen=True)
class SnapshotEntry:
    path: str  # relative, POSIX separators
    key: str  # object key (sha256 hex, + "x" if executable); "" for a symbolic link
    size: int
    link: str | None = None  # a symbolic link's target
    #: the local file to read when it is not ``root/path`` (a Dagster payload placed into the
    #: snapshot); not part of the hash, which names content and place only
    origin: str | None = None

    @property
    def executable(self) -> bool:
        return self.key.endswith("x")

    @property
    def sha256(self) -> str:
        return self.key[:64]


@dataclass(frozen=True)
class Snapshot:
    root: Path
    entries: tuple[SnapshotEntry, ...]
    digest: str

    @property
    def hash(self) -> str:
        """The snapshot's name on the cluster: ``BASE/code/<hash>/``."""
        return self.digest[:SHORT]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.entries)

    def by_path(self) -> dict[str, SnapshotEntry]:
        return {e.path: e for e in self.entries}

    def source(self, entry: SnapshotEntry) -> Path:
        """The local file an entry's content is read from."""
        return Path(entry.origin) if entry.origin is not None else self.root / entry.path

    def has_folder(self, folder: str) -> bool:
        """Whether ``folder`` ("" = the root) holds at least one file of the snapshot."""
        prefix = folder.rstrip("/") + "/" if folder else ""
        return any(e.path.startswith(prefix) for e in self.entries)


def digest_of(entries: tuple[SnapshotEntry, ...]) -> str:
    h = hashlib.sha256(b"pixi-deploy code snapshot 1\n")
    for entry in entries:
        h.update(f"{entry.path}\0{entry.key}\0{entry.link or ''}\0\n".encode())
    return h.hexdigest()


def take_snapshot(
    root: Path,
    rules: CodeRules,
    cache_dir: Path | None = None,
    on_file: Callable[[str], object] | None = None,
) -> Snapshot:
    """Choose the files (:mod:`pixi_deploy.code.select`) and name each by its content.
    ``on_file`` is told of each path once it is hashed (progress)."""
    root = root.resolve()
    paths = select_files(root, rules)
    index = _Index(cache_dir, root) if cache_dir is not None else None
    entries = []
    stamps = []
    for path in paths:
        entry, stamp = _entry(root / path, path, index)
        entries.append(entry)
        stamps.append(stamp)
        if on_file is not None:
            on_file(path)
    for entry, stamp in zip(entries, stamps, strict=True):  # all of it as of one moment
        try:
            now = os.lstat(root / entry.path)
        except FileNotFoundError:
            now = None
        if now is None or _stamp(now) != stamp:
            raise WorkspaceError(
                f"{entry.path} changed while the code snapshot was taken",
                "run the command again once nothing is changing the workspace",
            )
    if index is not None:
        index.save()
    frozen = tuple(entries)
    return Snapshot(root, frozen, digest_of(frozen))


def with_files(snapshot: Snapshot | None, files: Mapping[str, Path], root: Path) -> Snapshot:
    """``snapshot`` (or an empty one rooted at ``root``) with local files added at the given
    paths, replacing a workspace file of the same path: a Dagster payload and its extra
    files become part of the run's one snapshot rather than a separate upload."""
    entries = {e.path: e for e in snapshot.entries} if snapshot is not None else {}
    for path, local in files.items():
        full = Path(local).resolve()
        if not full.is_file():
            raise WorkspaceError(
                f"{local} does not exist or is not a file", "pass an existing file"
            )
        entry, _ = _entry(full, path, None)
        entries[path] = replace(entry, origin=str(full))
    frozen = tuple(entries[p] for p in sorted(entries))
    base = snapshot.root if snapshot is not None else root.resolve()
    return Snapshot(base, frozen, digest_of(frozen))


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_size, info.st_mtime_ns, info.st_ino)


def _entry(
    full: Path, path: str, index: _Index | None
) -> tuple[SnapshotEntry, tuple[int, int, int]]:
    try:
        info = os.lstat(full)
        if stat.S_ISLNK(info.st_mode):
            return SnapshotEntry(path, "", 0, os.readlink(full)), _stamp(info)
        known = index.lookup(path, info) if index is not None else None
        if known is not None:
            return SnapshotEntry(path, known, info.st_size), _stamp(info)
        with open(full, "rb", buffering=0) as source:
            opened = os.fstat(source.fileno())
            digest = hashlib.file_digest(source, "sha256").hexdigest()
            after = os.fstat(source.fileno())
    except FileNotFoundError:
        raise WorkspaceError(
            f"{path} disappeared while the code snapshot was taken",
            "run the command again once nothing is changing the workspace",
        ) from None
    except OSError as error:
        raise WorkspaceError(
            f"cannot read {path} for the code snapshot ({error.strerror or error})",
            "fix its permissions, or add it to [tool.pixi-deploy] exclude",
        ) from error
    if (opened.st_size, opened.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or (
        opened.st_ino != info.st_ino
    ):
        raise WorkspaceError(
            f"{path} changed while the code snapshot was taken",
            "run the command again once nothing is changing the workspace",
        )
    key = digest + ("x" if after.st_mode & 0o111 else "")
    if index is not None:
        index.remember(path, after, key)
    return SnapshotEntry(path, key, after.st_size), _stamp(after)


class _Index:
    """path -> (size, mtime_ns, ctime_ns, inode, mode, key) of the last look, per workspace."""

    def __init__(self, cache_dir: Path, root: Path) -> None:
        name = hashlib.sha256(str(root).encode()).hexdigest()[:SHORT]
        self.path = cache_dir / "code" / "index" / f"{name}.json"
        self.now = time.time_ns()
        self.entries: dict[str, list[object]] = {}
        self.written = 0
        try:
            data = json.loads(self.path.read_text())
            self.entries = dict(data.get("entries", {}))
            self.written = int(data.get("written", 0))
        except (OSError, ValueError, TypeError, AttributeError):
            pass
        self.fresh: dict[str, list[object]] = {}

    @staticmethod
    def _stamp(info: os.stat_result) -> list[object]:
        return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, info.st_mode]

    def lookup(self, path: str, info: os.stat_result) -> str | None:
        known = self.entries.get(path)
        if not isinstance(known, list) or len(known) != 6 or known[:5] != self._stamp(info):
            return None
        if (
            info.st_mtime_ns >= self.written - _RACY_NS
            or info.st_ctime_ns >= self.written - _RACY_NS
        ):
            return None  # racily clean: changed too close to the last look to trust the stat
        self.fresh[path] = known
        return str(known[5])

    def remember(self, path: str, info: os.stat_result, key: str) -> None:
        self.fresh[path] = [*self._stamp(info), key]

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".index-")
            with os.fdopen(fd, "w") as out:
                json.dump({"written": self.now, "entries": self.fresh}, out)
            os.replace(tmp, self.path)
        except OSError:
            pass  # only a cache: the next snapshot reads the files again
