"""Peak memory of a command and every process it starts, measured two ways (issue 18):

* ``max_rss``: the largest peak RSS of any one process of the tree, from the kernel (the
  rusage of ``wait4``, which covers the waited-for descendants too, read by GNU time): exactly what ``/usr/bin/time -v``,
  Slurm's and HTCondor's accounting report. Exact, never sampled.
* ``tree_pss`` / ``tree_rss``: the whole tree's memory at its worst moment, sampled every
  ``interval`` seconds from ``/proc``; PSS splits pages that forked workers share with their
  parent, so the sum is not inflated by copy-on-write sharing (RSS would count them twice).
  Sampling can miss a short spike: these are lower bounds, good against a generous limit.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Peak:
    max_rss: int  # bytes
    tree_pss: int  # bytes
    tree_rss: int  # bytes
    seconds: float
    returncode: int


def measure(
    argv: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    interval: float = 0.05,
) -> tuple[Peak, str]:
    """Run ``argv`` (standard output discarded) to its end; its `Peak` and its standard error.

    Started with ``posix_spawn`` (no copy of this process's memory): a forked child starts
    with its parent's RSS, and the kernel's peak would count the parent's size."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as errors, tempfile.NamedTemporaryFile() as report:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, errors.fileno(), 2),
        ]
        wrapped = [*_reporter(report.name), *(str(a) for a in argv)]
        program = shutil.which(wrapped[0]) or wrapped[0]
        env = dict(os.environ if env is None else env)
        pid = os.posix_spawn(program, wrapped, env, file_actions=actions)
        peaks = [0, 0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                pss = rss = 0
                for member in _tree(pid)[1:]:  # not the reporter itself
                    got = _memory_of(member)
                    pss += got[0]
                    rss += got[1]
                peaks[0], peaks[1] = max(peaks[0], pss), max(peaks[1], rss)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, _ = os.wait4(pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        errors.seek(0)
        text = errors.read().decode(errors="replace")
        lines = Path(report.name).read_text().split()
    max_rss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else 0
    code = os.waitstatus_to_exitcode(status)
    return Peak(max_rss, peaks[0], peaks[1], seconds, code), text


#: The reporter when there is no /usr/bin/time: a bare Python (about 9 MB, the floor of what
#: it can report) that forks the command, waits for it and writes its rusage's peak.
_PY_REPORTER = (
    "import os,sys\n"
    "pid=os.fork()\n"
    "if pid==0:\n os.execvp(sys.argv[2],sys.argv[2:])\n"
    "_,status,usage=os.wait4(pid,0)\n"
    "open(sys.argv[1],'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def _reporter(path: str) -> list[str]:
    """What runs the command and reports its peak RSS (KB) into ``path``: the kernel's figure
    for the command's tree, not counting this process. It must be small itself: a child starts
    with its parent's RSS as its peak (fork, and even vfork: exec records the old peak), so the
    command is started by ``/usr/bin/time`` (GNU time, 2 MB), not by this Python."""
    if os.access("/usr/bin/time", os.X_OK):
        return ["/usr/bin/time", "-f", "%M", "-o", path]
    return [sys.executable, "-I", "-S", "-c", _PY_REPORTER, path]


def _tree(root: int) -> list[int]:
    """``root`` and its descendants, now (from every process's parent in /proc)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree += frontier
    return tree


def _memory_of(pid: int) -> tuple[int, int]:
    """(PSS, RSS) in bytes; (0, 0) for a process that is gone (or a zombie)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
            for line in rollup:
                if line.startswith(b"Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith(b"Rss:"):
                    rss = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return pss, rss
