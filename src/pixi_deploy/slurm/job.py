"""One submitted job: its state, waiting for it (with live logs), its logs, cancelling it.

Live output comes from ``tail -F`` of the job's log files over the same SSH connection, started
once the job runs. The follower counts the lines it delivered; when the connection drops it
starts again after that line, and when the job has ended the rest is read from the files, so
every line arrives exactly once even across reconnects.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from pixi_deploy.errors import SchedulerError, TransportError
from pixi_deploy.transport import sh_c

from . import remote, states
from .spec import JobResources, JobResult, JobStatus

if TYPE_CHECKING:
    from .client import SlurmClient

LineCallback = Callable[[str], object]
T = TypeVar("T")
TAIL_BYTES = 64 * 1024
# stdout.log, stdout-12_3.log (array task), stdout.attempt-1.log (a requeued job's rerun)
_LOG_NAME = re.compile(r"(stdout|stderr)(?:-[0-9]+_([0-9]+))?(?:\.attempt-([0-9]+))?\.log\Z")


def log_order(name: str) -> tuple[int, int, str] | None:
    """(array task, attempt, "stdout"/"stderr") of a run folder's log file name, for sorting;
    None for other files."""
    match = _LOG_NAME.match(name)
    if match is None:
        return None
    return int(match.group(2) or -1), int(match.group(3) or 0), match.group(1)


def follow(
    client: SlurmClient,
    job_id: str,
    decide: Callable[[JobStatus], T | None],
    *,
    array: bool = False,
    timeout: float | None = None,
) -> T:
    """Wait on the client's shared poller until ``decide(status)`` returns something; a
    ``timeout`` (seconds of waiting) raises TimeoutError and leaves the job alone."""
    poller = client.poller
    deadline = None if timeout is None else time.monotonic() + timeout
    seen = -1
    poller.watch(job_id, array=array)
    try:
        while True:
            with poller.changed:
                if poller.generation == seen and poller.error is None:
                    poller.changed.wait(0.1)
                if poller.error is not None:
                    raise poller.error
                status = poller.latest.get(job_id)
                fresh = poller.generation != seen
                seen = poller.generation
            if status is not None and fresh:
                outcome = decide(status)
                if outcome is not None:
                    return outcome
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not end within {timeout:g}s")
    finally:
        poller.unwatch(job_id)


class Job:
    """A Slurm job submitted through pixi-deploy (or reattached by id)."""

    def __init__(
        self,
        client: SlurmClient,
        job_id: str,
        run_dir: str,
        *,
        resources: JobResources | None = None,
        array: bool = False,
    ) -> None:
        self.client = client
        self.id = job_id
        self.run_dir = run_dir
        self.array = array
        self.mem = resources.mem if resources else None
        self.time_limit = resources.time if resources else None
        # every node list Slurm showed for the job while it ran: a node that fails may be
        # dropped from the job's list by the time the job ends
        self.nodes_seen: list[str] = []

    def note(self, status: JobStatus) -> None:
        """Remember where the job runs (called with each status a waiter sees)."""
        if status.nodes and status.nodes not in self.nodes_seen:
            self.nodes_seen.append(status.nodes)

    def failed_nodes(self, result: JobResult) -> str:
        """For a NODE_FAIL result: which of the job's nodes are down now, with Slurm's
        reason (one sinfo call)."""
        known = [*self.nodes_seen, result.nodes]
        return self.client.failed_nodes(",".join(n for n in known if n))

    def __repr__(self) -> str:
        return f"Job({self.id!r}, run_dir={self.run_dir!r})"

    @property
    def stdout_path(self) -> str:
        return f"{self.run_dir}/stdout.log"

    @property
    def stderr_path(self) -> str:
        return f"{self.run_dir}/stderr.log"

    def status(self) -> JobStatus:
        status = self.client.status(self.id)
        self.note(status)
        return status

    def cancel(self) -> None:
        self.client.cancel(self.id)

    def logs(self) -> tuple[str, str]:
        """The whole stdout and stderr (an array's tasks, a requeued job's attempts one after
        another)."""
        return self._read_logs(0)

    def attempts(self) -> list[tuple[str, str]]:
        """stdout and stderr of each attempt of a requeued job, first run first (a job that
        ran once has one). Slurm's own messages about an attempt's end (e.g. the node
        failure) land in the first attempt's files."""
        by_attempt: dict[int, list[str]] = {}
        for (_, attempt, name), body in self._log_chunks(0):
            pair = by_attempt.setdefault(attempt, ["", ""])
            pair[0 if name == "stdout" else 1] += body
        return [(out, err) for _, (out, err) in sorted(by_attempt.items())]

    def _read_logs(self, max_bytes: int, cleanup: bool = False) -> tuple[str, str]:
        stdout: list[str] = []
        stderr: list[str] = []
        for (_, _, name), body in self._log_chunks(max_bytes, cleanup):
            (stdout if name == "stdout" else stderr).append(body)
        return "".join(stdout), "".join(stderr)

    def _log_chunks(
        self, max_bytes: int, cleanup: bool = False
    ) -> list[tuple[tuple[int, int, str], str]]:
        """The run folder's log files as ((task, attempt, stream), text), in task then
        attempt order (the shell's glob would put ``stdout.attempt-1.log`` first)."""
        out = self.client.transport.run_script(
            remote.TAILS, [self.run_dir, str(max_bytes), "1" if cleanup else "0"], check=False
        ).stdout
        chunks = []
        for chunk in out.split("\036")[1:]:
            name, _, body = chunk.partition("\n")
            key = log_order(name)
            if key is not None:
                chunks.append((key, body))
        return sorted(chunks, key=lambda item: item[0])

    def result(self, status: JobStatus | None = None) -> JobResult:
        """The result of an ended job (raises if it has not ended yet)."""
        status = status or self.status()
        if not status.final:
            raise SchedulerError(f"job {self.id} has not ended yet ({status.state})")
        out, err = self._read_logs(TAIL_BYTES, cleanup=True)
        result = states.to_result(status, out, err, mem=self.mem, time_limit=self.time_limit)
        if result.state == "NODE_FAIL":
            result.failed_nodes = self.failed_nodes(result)
        return result

    def wait(
        self,
        *,
        timeout: float | None = None,
        on_stdout: LineCallback | None = None,
        on_stderr: LineCallback | None = None,
        poll_interval: float = 0.5,
    ) -> JobResult:
        """Block until the job ends; ``timeout`` counts running time only (never the queue).

        On timeout the job is cancelled and the result says TIMEOUT. Ctrl-C cancels the job
        and re-raises. Output callbacks run in this thread.
        """
        poller = self.client.poller
        if poll_interval < self.client.poll_interval:
            self.client.poll_interval = poll_interval
        follower: _Follower | None = None
        running_since: float | None = None
        seen = -1
        poller.watch(self.id, array=self.array)
        try:
            while True:
                with poller.changed:
                    if poller.generation == seen and poller.error is None:
                        poller.changed.wait(0.1)
                    if poller.error is not None:
                        raise poller.error
                    status = poller.latest.get(self.id)
                    fresh = poller.generation != seen
                    seen = poller.generation
                if follower is not None:
                    follower.deliver()
                if status is None or not fresh:
                    continue
                self.note(status)
                if (status.running or status.final) and running_since is None:
                    running_since = time.monotonic()
                    if (on_stdout or on_stderr) and not self.array:
                        follower = _Follower(self, on_stdout, on_stderr)
                if status.final:
                    if follower is not None:
                        follower.finish()
                    return self.result(status)
                if status.pending and status.reason == "DependencyNeverSatisfied":
                    # the cluster keeps such jobs (no kill_invalid_depend): it never runs
                    self.cancel()
                    out, err = self._read_logs(TAIL_BYTES, cleanup=True)
                    return JobResult(
                        self.id, "CANCELLED", None, None, status.reason, out, err, self.mem
                    )
                if (
                    timeout is not None
                    and running_since is not None
                    and time.monotonic() - running_since > timeout
                ):
                    self.cancel()
                    if follower is not None:
                        follower.finish()
                    out, err = self._read_logs(TAIL_BYTES, cleanup=True)
                    return JobResult(
                        self.id,
                        "TIMEOUT",
                        None,
                        None,
                        f"ran longer than the {timeout:g}s timeout; cancelled by pixi-deploy",
                        out,
                        err,
                        self.mem,
                        f"{timeout:g}s",
                    )
        except KeyboardInterrupt:
            self.cancel()
            raise
        finally:
            poller.unwatch(self.id)
            if follower is not None:
                follower.stop()


class _Follower:
    """``tail -F`` of both log files in a thread; lines are handed to the waiting thread."""

    def __init__(
        self, job: Job, on_stdout: LineCallback | None, on_stderr: LineCallback | None
    ) -> None:
        self.job = job
        self.callbacks = {"stdout": on_stdout, "stderr": on_stderr}
        self.counts = {"stdout": 0, "stderr": 0}
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"pixi-deploy-tail-{job.id}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        transport = self.job.client.transport
        while not self._stop.is_set():
            argv = sh_c(
                remote.FOLLOW,
                [
                    self.job.stdout_path,
                    self.job.stderr_path,
                    str(self.counts["stdout"] + 1),
                    str(self.counts["stderr"] + 1),
                ],
            )
            try:
                with transport.iter_lines(argv) as lines:
                    for name, line in lines.follow(stop=self._stop):
                        self.counts[name] += 1
                        self.lines.put((name, line))
            except TransportError:
                pass  # connection lost: the transport reconnects; go on after the last line
            self._stop.wait(0.5)

    def deliver(self) -> None:
        while True:
            try:
                name, line = self.lines.get_nowait()
            except queue.Empty:
                return
            callback = self.callbacks[name]
            if callback is not None:
                callback(line)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def finish(self) -> None:
        """Stop following, then deliver what the files hold beyond the lines already seen."""
        self.stop()
        self.deliver()
        out, err = self.job._read_logs(0)
        for name, text in (("stdout", out), ("stderr", err)):
            rest = text.splitlines()[self.counts[name] :]
            callback = self.callbacks[name]
            for line in rest:
                if callback is not None:
                    callback(line)
