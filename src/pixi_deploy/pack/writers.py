"""Write packages into a prefix with a few threads, each reading a package's paths.json and
then writing its payload, package after package, biggest first.

Why not read every paths.json first: that left one core idle for a tenth of an unpack (0.3 s of
3 s for 300 packages), and a third thread reading them beside the writers cost more in
contention for Python's lock than it saved.

Safety without knowing every package before writing: no symlink is made while payloads are
written (they are recorded and made by `PackageWriters.make_symlinks`), so nothing can be
written through one. Whether two packages own one path, or one has files beneath another's
symlink, is the caller's to check once `PackageWriters.wait` has returned every package, before
any symlink is made; rattler then gets the whole environment.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import rattler
import zstandard

from pixi_deploy.errors import PackError
from pixi_deploy.pack.archives import Archive, check_digest, mapped
from pixi_deploy.pack.untar import WINDOW, UnusualMember, extract_payload

if TYPE_CHECKING:
    from pixi_deploy.pack.direct import _Package

#: A package's paths.json and payload position, or None when rattler must install it.
Read = Callable[[rattler.RepoDataRecord, Archive], "_Package | None"]
#: Called with a written package and its symlinks (path -> target, not made yet); False when
#: the package was taken back out (for rattler), so its symlinks are not made either.
Link = Callable[["_Package", Mapping[str, str]], bool]


class PackageWriters:
    """``with PackageWriters(...) as w: w.submit(...) ...; w.wait(); w.make_symlinks()``."""

    def __init__(self, staging: Path, workers: int, read: Read, link: Link) -> None:
        self.staging = staging
        self.read = read
        self.link = link
        self.packages: list[_Package] = []  # every package read (written or not)
        self.unreadable: list[rattler.RepoDataRecord] = []  # for rattler
        self.unusual: list[_Package] = []  # for tarfile, once the threads are done
        self._symlinks: list[dict[str, str]] = []
        self._queue: queue.Queue[tuple[rattler.RepoDataRecord, Archive] | None] = queue.Queue()
        self._errors: list[BaseException] = []
        self._stop = threading.Event()
        self._folders: set[str] = set()
        self._joined = False
        self._threads = [
            threading.Thread(target=self._work, name=f"pixi-deploy-writer-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> PackageWriters:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is not None:
            self._stop.set()
        self._join()

    def submit(self, record: rattler.RepoDataRecord, archive: Archive) -> None:
        self._queue.put((record, archive))

    def wait(self) -> None:
        """Every submitted package read and written (or the first error, raised here)."""
        self._join()
        if self._errors:
            raise self._errors[0]

    def make_symlinks(self) -> None:
        for links in self._symlinks:
            for path, target in links.items():
                where = self.staging / path
                where.parent.mkdir(parents=True, exist_ok=True)
                if where.is_symlink() or where.is_file():
                    where.unlink()
                os.symlink(target, where)

    def _join(self) -> None:
        if self._joined:
            return
        self._joined = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        buffer = bytearray(WINDOW)
        while (job := self._queue.get()) is not None:
            if self._stop.is_set():
                continue
            try:
                package = self.read(*job)
                if package is None:
                    self.unreadable.append(job[0])
                else:
                    self.packages.append(package)
                    self._write(package, buffer)
            except BaseException as error:  # raised in the caller's thread by wait()
                self._errors.append(error)
                self._stop.set()

    def _write(self, package: _Package, buffer: bytearray) -> None:
        for folder in {os.path.dirname(e["_path"]) for e in package.paths} - self._folders:
            os.makedirs(self.staging / folder, exist_ok=True)  # safe if two threads race
            self._folders.add(folder)
        symlinks: dict[str, str] = {}
        with mapped(package.archive) as archive:
            check_digest(package.archive, archive)
            if package.payload_at is None:
                self.unusual.append(package)
                return
            offset, size = package.payload_at
            try:
                extract_payload(
                    archive[offset : offset + size],
                    str(self.staging),
                    declared_symlinks=package.symlinks,
                    all_symlinks=(),  # none exist yet: make_symlinks() makes them
                    buffer=buffer,
                    symlinks_out=symlinks,
                )
            except UnusualMember:
                self.unusual.append(package)  # its partial files are removed before tarfile
                return
            except zstandard.ZstdError as error:
                raise PackError(
                    f"{package.record.file_name} cannot be decompressed ({error})",
                    "re-create the pack, or re-download the package",
                ) from error
        if self.link(package, symlinks):
            self._symlinks.append(symlinks)
