"""Scratch folders that a killed process does not leave behind for good.

A deploy, unpack or image build lays out up to gigabytes of files in a scratch folder. When its
process is killed (kill -9, the OOM killer) no ``finally`` runs, so the folder would stay
forever. Each folder therefore comes with a lock file its owner holds for as long as it lives;
the kernel drops the lock when the owner dies, however it dies. The next process that asks for a
scratch folder in the same place removes every folder whose lock it can take: its owner is gone.

The lock is a POSIX record lock (``lockf``), not ``flock``: ``unpack`` forks payload writers,
and a forked child shares its parent's ``flock`` locks, so a writer still winding down would
keep a dead owner's folder looking alive. POSIX locks belong to the process alone, which also
means this process must not test its own folders' locks (it would always get them): those are
kept in ``_OWN``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from pixi_deploy.interrupts import deferred

_T = TypeVar("_T")

LOCK_SUFFIX = ".owner"
# A folder younger than this is never pruned: its owner may have created the lock file and not
# yet taken the lock (a few microseconds), and there is no hurry.
GRACE_SECONDS = 60.0

_OWN: set[Path] = set()
_OWN_LOCK = threading.Lock()


@contextlib.contextmanager
def scratch_folder(
    root: Path, prefix: str, *, remove_in_background: bool = False
) -> Iterator[Path]:
    """A new, empty folder under ``root``, removed on exit (by a non-daemon thread when
    ``remove_in_background``: deleting many files takes seconds and the result is ready before
    that), and removed by a later call if this process dies first.

    SIGINT/SIGTERM wait (`interrupts.deferred`) while the folder is made and while it is
    removed: the CLI turns them into exceptions, and one raised between ``mkdtemp`` and the
    ``try`` would leave the folder behind."""
    folder: Path | None = None
    fd: int | None = None
    try:
        with deferred():  # a signal held back is raised on leaving, inside the try
            root.mkdir(parents=True, exist_ok=True)
            prune_abandoned(root, prefix)
            folder = Path(tempfile.mkdtemp(dir=root, prefix=prefix)).absolute()
            with _OWN_LOCK:
                _OWN.add(folder)
            fd = _open_lock(folder)
            with contextlib.suppress(OSError):  # no locks on this filesystem: nobody prunes it
                fcntl.lockf(fd, fcntl.LOCK_EX)
        yield folder
    finally:
        if folder is not None:
            with deferred():
                _remove_later(folder, fd) if remove_in_background else _remove(folder, fd)


def _remove(folder: Path, fd: int | None) -> None:
    _discard(folder)
    if fd is not None:
        os.close(fd)  # released last, so no pruner removes the folder under rmtree
    with _OWN_LOCK:
        _OWN.discard(folder)


def _remove_later(folder: Path, fd: int | None) -> None:
    threading.Thread(target=_remove, args=(folder, fd), name=f"remove {folder.name}").start()


@contextlib.contextmanager
def discarded_on_exit(create: Callable[[], _T], discard: Callable[[_T], object]) -> Iterator[_T]:
    """``create()`` something temporary (a staging folder, a partial file) and ``discard`` it
    on exit, whatever ends the block: SIGINT/SIGTERM wait while it is made and discarded
    (``discard`` must tolerate a thing already renamed into place)."""
    made: _T | None = None
    try:
        with deferred():
            made = create()
        yield made
    finally:
        if made is not None:
            with deferred():
                discard(made)


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + LOCK_SUFFIX)


def _open_lock(folder: Path) -> int:
    return os.open(_lock_path(folder), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _discard(folder: Path) -> None:
    """The folder, then its lock file (whoever removes them still holds the lock)."""
    shutil.rmtree(folder, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        _lock_path(folder).unlink()


def prune_abandoned(root: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders under ``root`` whose owner has died; returns them."""
    removed: list[Path] = []
    now = time.time()
    for folder in root.absolute().glob(f"{prefix}*"):
        with _OWN_LOCK:
            if folder in _OWN:
                continue
        if folder.name.endswith(LOCK_SUFFIX) or not folder.is_dir():
            continue
        try:
            if now - folder.stat().st_mtime < GRACE_SECONDS:
                continue
            fd = _open_lock(folder)
        except OSError:
            continue  # gone meanwhile, or not ours to touch
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive (or this filesystem has no locks: keep it)
            _discard(folder)
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
