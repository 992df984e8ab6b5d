"""Scratch folders that a killed process does not leave behind for good.

A deploy or image build lays out up to gigabytes of files in a scratch folder. When its process
is killed (kill -9, the OOM killer, a lost laptop lid) no ``finally`` runs, so the folder would
stay forever. Each folder therefore comes with a lock file its owner holds (``flock``) for as
long as it lives; the kernel drops the lock when the owner dies, however it dies. The next
process that asks for a scratch folder in the same place removes every folder whose lock it
can take: its owner is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_SUFFIX = ".owner"
# A folder younger than this is never pruned: its owner may have created the lock file and not
# yet taken the lock (a few microseconds), and there is no hurry.
GRACE_SECONDS = 60.0


@contextlib.contextmanager
def scratch_folder(
    root: Path, prefix: str, *, remove_in_background: bool = False
) -> Iterator[Path]:
    """A new, empty folder under ``root``, removed on exit (by a non-daemon thread when
    ``remove_in_background``: deleting many files takes seconds and the result is ready before
    that), and removed by a later call if this process dies first."""
    root.mkdir(parents=True, exist_ok=True)
    prune_abandoned(root, prefix)
    folder = Path(tempfile.mkdtemp(dir=root, prefix=prefix))
    lock_path = folder.with_name(folder.name + LOCK_SUFFIX)
    fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield folder
    finally:

        def remove() -> None:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            os.close(fd)  # released last, so no pruner removes the folder under rmtree

        if remove_in_background:
            threading.Thread(target=remove, name=f"remove {folder.name}").start()
        else:
            remove()


def prune_abandoned(root: Path, prefix: str) -> list[Path]:
    """Remove the scratch folders under ``root`` whose owner has died; returns them."""
    removed: list[Path] = []
    now = time.time()
    for folder in root.glob(f"{prefix}*"):
        if folder.name.endswith(LOCK_SUFFIX) or not folder.is_dir():
            continue
        lock_path = folder.with_name(folder.name + LOCK_SUFFIX)
        try:
            if now - folder.stat().st_mtime < GRACE_SECONDS:
                continue
            fd = os.open(lock_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError:
            continue  # gone meanwhile, or not ours to touch
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its owner is alive
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
