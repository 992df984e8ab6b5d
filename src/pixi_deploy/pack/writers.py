"""Write packages' payloads into a prefix with a few forked worker processes, biggest first,
while this process reads each package's paths.json before it goes out and links it (placeholders,
conda-meta) once it is back.

Why processes, not threads: a payload's bytes cost little Python, but its 70 files each cost a
header parsed in Python between two system calls. Two threads then hand Python's lock back and
forth tens of thousands of times per unpack, and each hand-over is a futex wake-up and a context
switch; on the 2-vCPU machines we measure on, forked writers unpacked the same 300 packages in
2.4-2.6 s where threads took 2.8-3.3 s, with less CPU. ``fork`` (not a fresh interpreter) because a
new Python with our imports takes 0.2-0.4 s to start, most of what is gained.

Why ``fork`` is safe here although the parent may run threads (a progress display, rattler's
runtime): the child runs only `_serve` and leaves with ``os._exit``. It takes no lock another
thread could hold: no stdio, no logging, no imports; its hashing copies a sha256 object made
before the fork, so OpenSSL's algorithm lookup is not needed; zstandard has no global state.
Python 3.12+ warns about every fork of a threaded process; for this child the warning does not
apply and is silenced for that one call. Without ``fork`` (not Linux) the jobs run here, in turn.

Safety without knowing every package before writing: no symlink is made while payloads are
written (they are recorded, in `PackageWriters.symlinks`, for the caller to check and make once
every package is back), and every write goes through `pack.confined`, so nothing can be written
through one. A member a package may not hold stops the whole install (`pack.untar`). Whether two
packages own one path, or one has files beneath another's symlink, is the caller's to check once
`PackageWriters.wait` has returned every package, before any symlink is made; rattler then gets
the whole environment.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import hashlib
import os
import signal
import sys
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

import rattler
import zstandard

from pixi_deploy import interrupts
from pixi_deploy.errors import PackError
from pixi_deploy.pack.archives import Archive, check_digest, open_archive, open_range
from pixi_deploy.pack.confined import UnsafeMember
from pixi_deploy.pack.untar import WINDOW, UnusualMember, extract_payload

if TYPE_CHECKING:
    from pixi_deploy.pack.linking import DirectPackage

#: A package's paths.json and payload position, or None when rattler must install it.
Read = Callable[[rattler.RepoDataRecord, Archive], "DirectPackage | None"]
#: Called with a written package and its symlinks (path -> target, not made yet); False when
#: the package was taken back out (for rattler), so its symlinks are not made either.
Link = Callable[["DirectPackage", Mapping[str, str]], bool]

#: A cap, so that a 128-core login node does not start 128 writers against one file system
#: (measured only up to 2 cores: the machines here have 2).
MAX_WORKERS = 8

#: Below this many bytes of archives, payloads are written by this process alone
#: (``workers=0``): forking the writers and handing them their jobs costs more than the two
#: cores save. Measured on the real conda-forge environment of the tests (17 packages, 12 MB of
#: archives): 0.56 s inline against 0.65 s forked, median of 9 interleaved (see
#: benchmarks/README.md); the 300-package, 477 MB one is faster forked.
INLINE_BELOW_BYTES = 32 << 20

#: Jobs sent ahead to each worker: one being written, one waiting, so that a worker never idles
#: while this process reads or links.
_AHEAD = 2


@dataclass(frozen=True)
class _Job:
    """What a worker needs of a package; small, since it is pickled through a pipe."""

    archive: Archive
    payload_at: tuple[int, int] | None
    payload_member: str
    declared_symlinks: frozenset[str]
    staging: str
    listed: frozenset[str]  # what paths.json lists: nothing else is written


#: A job's outcome: ("written", symlinks) | ("failed", exception)
_Result = tuple[str, Any]


class PackageWriters:
    """``with PackageWriters(...) as w: w.submit(...) ...; w.wait()``; then ``w.symlinks``."""

    def __init__(self, staging: Path, workers: int | None, read: Read, link: Link) -> None:
        """``workers``: how many payloads are written at once (default: one per usable core, up
        to `MAX_WORKERS`); 0 = by this process, in turn (small environments)."""
        self.staging = staging
        self.read = read
        self.link = link
        self.packages: list[DirectPackage] = []  # every package read (written or not)
        self.unreadable: list[rattler.RepoDataRecord] = []  # for rattler
        self.symlinks: dict[str, str] = {}  # of every package linked: name -> target, not made
        self.symlink_owners: dict[str, str] = {}  # name -> the package's file name
        #: Told of each package once it is written and linked (e.g. to delete its archive).
        self.on_linked: Callable[[DirectPackage], object] | None = None
        self._todo: deque[tuple[rattler.RepoDataRecord, Archive]] = deque()
        self._workers: list[_Worker] = []
        try:
            count = default_workers() if workers is None else max(0, workers)
            if count == 0:
                self._workers.append(_InlineWorker())
            for _ in range(count):
                self._workers.append(_start_worker())
        except BaseException:
            self._close(kill=True)
            raise
        self._sent: dict[_Worker, deque[DirectPackage]] = {w: deque() for w in self._workers}

    def __enter__(self) -> PackageWriters:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._close(kill=kind is not None)

    def submit(self, record: rattler.RepoDataRecord, archive: Archive) -> None:
        self._todo.append((record, archive))

    def wait(self) -> None:
        """Every submitted package read, written and linked; the first error is raised here,
        once no worker writes any more (the caller may then remove what was written)."""
        self.pump(0)
        self._close(kill=False)

    def pump(self, backlog: int) -> None:
        """Write and link until at most ``backlog`` submitted packages are not done yet: what
        lets a caller submit packages as they arrive (a pack read from a stream) and keep only
        a few of their archives at a time."""
        try:
            self._run(backlog)
        except BaseException:
            self._close(kill=True)
            raise

    @property
    def capacity(self) -> int:
        """How many packages are written or waiting in the workers at once."""
        return len(self._workers) * _AHEAD

    def _run(self, backlog: int) -> None:
        sent = self._sent
        while True:
            for _ in range(_AHEAD):  # round-robin, so the biggest packages go to different workers
                for worker, queued in sent.items():
                    if len(queued) < _AHEAD and (package := self._next_package()) is not None:
                        worker.send(_job(package, self.staging))
                        queued.append(package)
            if len(self._todo) + sum(len(queued) for queued in sent.values()) <= backlog:
                return
            for worker in _ready([w for w, queued in sent.items() if queued]):
                self._finish(sent[worker].popleft(), worker.receive())

    def _next_package(self) -> DirectPackage | None:
        while self._todo:
            record, archive = self._todo.popleft()
            package = self.read(record, archive)
            if package is None:
                self.unreadable.append(record)
                continue
            self.packages.append(package)
            return package
        return None

    def _finish(self, package: DirectPackage, result: _Result) -> None:
        outcome, value = result
        if outcome == "failed":
            if isinstance(value, UnsafeMember | UnusualMember):
                raise type(value)(
                    f"package {package.record.file_name}: {value.message}", value.hint
                )
            raise value
        if self.link(package, value):
            self.symlinks.update(value)
            self.symlink_owners.update(dict.fromkeys(value, package.record.file_name))
            if self.on_linked is not None:
                self.on_linked(package)

    def _close(self, *, kill: bool) -> None:
        for worker in self._workers:
            worker.close(kill=kill)
        self._workers = []


def default_workers() -> int:
    """One per core this process may run on (a Slurm job's or a container's cpuset), or
    ``$PIXI_DEPLOY_WRITERS`` (0 = this process alone)."""
    chosen = configured_workers()
    if chosen is not None:
        return chosen
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 2
    return max(1, min(MAX_WORKERS, usable))


def configured_workers() -> int | None:
    """``$PIXI_DEPLOY_WRITERS`` as a number of writers (0 = this process), None when unset or
    not a number from 0 to `MAX_WORKERS`."""
    value = os.environ.get("PIXI_DEPLOY_WRITERS", "")
    return int(value) if value.isdigit() and int(value) <= MAX_WORKERS else None


def _job(package: DirectPackage, staging: Path) -> _Job:
    return _Job(
        package.archive,
        package.payload_at,
        package.payload_member,
        package.symlinks,
        str(staging),
        package.listed,
    )


# --------------------------------------------------------------------------------------------
# Workers: a forked process each, or (without fork) this process
# --------------------------------------------------------------------------------------------

_CAN_FORK = sys.platform == "linux" and hasattr(os, "fork")


def _start_worker() -> _Worker:
    if _CAN_FORK:
        try:
            return _ForkedWorker()
        except OSError:  # no processes left to fork (a ulimit): slower, but it still works
            pass
    return _InlineWorker()


class _Worker:
    def send(self, job: _Job) -> None:
        raise NotImplementedError

    def receive(self) -> _Result:
        raise NotImplementedError

    def close(self, *, kill: bool) -> None:
        raise NotImplementedError


class _InlineWorker(_Worker):
    def __init__(self) -> None:
        self._buffer = bytearray(WINDOW)
        self._results: deque[_Result] = deque()

    def send(self, job: _Job) -> None:
        self._results.append(_perform(job, self._buffer, hashlib.sha256()))

    def receive(self) -> _Result:
        return self._results.popleft()

    def close(self, *, kill: bool) -> None:
        self._results.clear()


def _child(
    ours: Connection, theirs: Connection, sha256: Any, die_with: Callable[[], None], parent: int
) -> NoReturn:
    """A forked writer's life: signals as a plain Python process has them, then serve."""
    status = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        gc.freeze()  # the parent's objects: never scanned, so their pages stay shared
        ours.close()
        die_with()
        if os.getppid() == parent:  # else the parent is gone already
            _serve(theirs, sha256)
        status = 0
    finally:
        os._exit(status)


class _ForkedWorker(_Worker):
    def __init__(self) -> None:
        ours, theirs = Pipe()
        sha256 = hashlib.sha256()  # copied in the child: see the module's docstring
        die_with = _die_with_parent()  # looked up here: dlopen in the child could deadlock
        parent = os.getpid()
        # SIGINT/SIGTERM wait while forking: one landing in the fork handlers (logging's) is
        # printed and dropped by Python, and the deploy would go on as if never interrupted
        with warnings.catch_warnings(), interrupts.deferred():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's code (nor the with)
                _child(ours, theirs, sha256, die_with, parent)
        theirs.close()
        self.pid: int | None = pid
        self.connection: Connection = ours

    def send(self, job: _Job) -> None:
        with suppress(OSError):  # it died; receive() says how
            self.connection.send(job)

    def receive(self) -> _Result:
        try:
            return self.connection.recv()
        except (EOFError, OSError):
            raise PackError(
                f"a payload writer process stopped unexpectedly ({_describe(self._reap())})",
                "check the memory and disk space of this machine, then unpack again",
            ) from None

    def close(self, *, kill: bool) -> None:
        if self.pid is not None:
            if kill:
                os.kill(self.pid, signal.SIGKILL)
            else:
                with suppress(OSError):
                    self.connection.send(None)
        self.connection.close()
        self._reap()

    def _reap(self) -> int | None:
        """Its exit status, once it has exited (None: reaped already, here or elsewhere)."""
        if self.pid is None:
            return None
        pid, self.pid = self.pid, None
        try:
            return os.waitpid(pid, 0)[1]
        except ChildProcessError:  # the application ignores SIGCHLD: the kernel reaped it
            return None


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None]:
    """What a child calls to be killed when this process dies, even by SIGKILL: it must not
    go on writing into a folder that a later run may be cleaning up (Linux's PR_SET_PDEATHSIG)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return functools.partial(prctl, _PR_SET_PDEATHSIG, signal.SIGKILL)


def _ready(workers: list[_Worker]) -> list[_Worker]:
    inline: list[_Worker] = [w for w in workers if isinstance(w, _InlineWorker)]
    if inline:
        return inline
    forked = {w.connection: w for w in workers if isinstance(w, _ForkedWorker)}
    return [forked[c] for c in wait(list(forked))]  # type: ignore[index]


def _describe(status: int | None) -> str:
    if status is None:
        return "no exit status"
    if os.WIFSIGNALED(status):
        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


def _serve(connection: Connection, sha256: Any) -> None:
    """The worker's loop: a job in, its result out, until None (or the parent is gone)."""
    buffer = bytearray(WINDOW)
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        result = _perform(job, buffer, sha256.copy())
        try:
            connection.send(result)
        except OSError:
            return
        except Exception:  # an exception that does not pickle: its text, then
            failure = result[1]
            connection.send(("failed", PackError(f"{type(failure).__name__}: {failure}")))


def _perform(job: _Job, buffer: bytearray, sha256: Any) -> _Result:
    """Check the archive against its sha256, then write its payload (symlinks recorded)."""
    try:
        check_digest(job.archive, buffer, sha256)  # in chunks: memory stays flat (issue 18)
        if job.payload_at is None:  # a zip-compressed payload: streamed through zipfile
            with (
                open_archive(job.archive) as source,
                zipfile.ZipFile(source) as zf,
                zf.open(job.payload_member) as stream,
            ):
                return ("written", _extract(job, stream, buffer))
        offset, size = job.payload_at
        with open_range(job.archive, offset, size) as payload:
            return ("written", _extract(job, payload, buffer))
    except zstandard.ZstdError as error:
        return (
            "failed",
            PackError(
                f"{job.archive.name} cannot be decompressed ({error})",
                "re-create the pack, or re-download the package",
            ),
        )
    except Exception as error:
        return ("failed", error)


def _extract(job: _Job, payload: Any, buffer: bytearray) -> dict[str, str]:
    return extract_payload(
        payload,
        job.staging,
        declared_symlinks=job.declared_symlinks,
        all_symlinks=(),  # none exist yet: the caller makes them once every package is back
        buffer=buffer,
        wanted=job.listed,  # the rest (info/ licences, tests, recipes) is read and checked only
    )
