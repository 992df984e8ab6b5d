"""Peak memory of a command and every process it starts, measured two ways (issue 18):

* ``max_rss``: the largest peak RSS of any one process of the tree, from the kernel (``wait4``'s
  rusage, which covers the waited-for descendants too): exactly what ``/usr/bin/time -v``,
  Slurm's and HTCondor's accounting report. Exact, never sampled.
* ``tree_pss`` / ``tree_rss``: the whole tree's memory at its worst moment, sampled every
  ``interval`` seconds from ``/proc``; PSS splits pages that forked workers share with their
  parent, so the sum is not inflated by copy-on-write sharing (RSS would count them twice).
  Sampling can miss a short spike: these are lower bounds, good against a generous limit.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


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
    stdin: IO[Any] | int | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    interval: float = 0.02,
    stdout: IO[Any] | int | None = subprocess.DEVNULL,
    stderr: IO[Any] | int | None = subprocess.PIPE,
) -> tuple[Peak, str]:
    """Run ``argv`` to its end; its `Peak` and its standard error."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [str(a) for a in argv],
        stdin=stdin,
        stdout=stdout,
        stderr=subprocess.PIPE if stderr == subprocess.PIPE else stderr,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    errors: list[bytes] = []
    reader = None
    if process.stderr is not None:
        pipe = process.stderr
        reader = threading.Thread(target=lambda: errors.append(pipe.read()), daemon=True)
        reader.start()
    peaks = [0, 0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss = rss = 0
            for pid in _tree(process.pid):
                got = _memory_of(pid)
                pss += got[0]
                rss += got[1]
            peaks[0], peaks[1] = max(peaks[0], pss), max(peaks[1], rss)
            done.wait(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    if reader is not None:
        reader.join()
    peak = Peak(usage.ru_maxrss * 1024, peaks[0], peaks[1], seconds, process.returncode)
    return peak, b"".join(errors).decode(errors="replace")


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
