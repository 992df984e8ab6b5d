"""FunctionJob: a Python function running as a Slurm job, and getting its value back.

Waiting uses the client's shared squeue poller (an array's tasks all follow the one array job,
so a thousand tasks cost one squeue per interval). When a job has ended, its result files
(``runner.py`` writes one per task) come back over the same SSH connection in one round trip,
together with the tails of its logs; an array's results are fetched for every task that has
ended so far at once, so reading a thousand results costs a handful of round trips.
"""

from __future__ import annotations

import re
import threading
from typing import TYPE_CHECKING, Any

from pixi_deploy.errors import SchedulerError

from . import remote, states
from .job import TAIL_BYTES, follow, log_order
from .runner import FUNCTION_RAISED
from .spec import JobResult, JobStatus

if TYPE_CHECKING:
    from .job import Job

_RESULT = re.compile(r"result-([0-9]+)-([0-9]+)\.pkl\Z")
# an array's pending tasks, as squeue compresses them: 12_[3-7,9%2]
_PENDING = re.compile(r"\[([^\]]*)\]")


class UncompletedJobError(SchedulerError):
    """The job ended without a result (cancelled, killed, out of memory, its node failed,
    its dependency can never be met...); ``result`` says how it ended."""

    def __init__(self, message: str, result: JobResult) -> None:
        super().__init__(message)
        self.result = result


class RemoteFunctionError(SchedulerError):
    """The function raised an exception that cannot be rebuilt here (it did not pickle);
    its type, message and the remote traceback are kept."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.traceback = traceback_text


class RemoteTraceback(Exception):
    """The traceback from the cluster, chained as the ``__cause__`` of a re-raised exception
    (as concurrent.futures does for process pools), so it prints above the local one."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


def parse_frames(data: bytes) -> dict[str, bytes]:
    """``\\036NAME SIZE\\n`` + SIZE bytes, repeated (remote.FETCH_RESULTS)."""
    frames: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] != b"\036":
            raise SchedulerError("the cluster sent a garbled result stream", "submit again")
        end = data.index(b"\n", pos)
        name, _, size = data[pos + 1 : end].decode(errors="replace").rpartition(" ")
        start = end + 1
        frames[name] = data[start : start + int(size)]
        pos = start + int(size)
    return frames


class _Results:
    """Result files and logs fetched for one job (or one array), by array index."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.pickles: dict[int, dict[int, bytes]] = {}
        self.lock = threading.Lock()

    def fetch(
        self, indexes: list[int], log_suffix: str | None, whole_logs: bool = False
    ) -> tuple[str, str]:
        """Fetch the results of ``indexes`` (kept), and the logs named by ``log_suffix``
        (None: none; their tails unless ``whole_logs``); returns (stdout, stderr)."""
        size = "all" if whole_logs else str(TAIL_BYTES)
        args = [self.job.run_dir, size if log_suffix is not None else "0"]
        args += [log_suffix or "", *map(str, indexes)]
        data = self.job.client.transport.run_script(remote.FETCH_RESULTS, args).stdout_bytes
        out: list[tuple[tuple[int, int, str], str]] = []
        with self.lock:
            for index in indexes:
                self.pickles.setdefault(index, {})
            for name, body in parse_frames(data).items():
                match = _RESULT.match(name)
                if match is not None:
                    self.pickles[int(match.group(1))][int(match.group(2))] = body
                elif (key := log_order(name)) is not None:
                    out.append((key, body.decode(errors="replace")))
        out.sort(key=lambda item: item[0])
        stdout = "".join(text for (_, _, s), text in out if s == "stdout")
        stderr = "".join(text for (_, _, s), text in out if s == "stderr")
        return stdout, stderr


class ArrayTracker:
    """What the tasks of one map_array job did, shared by its FunctionJobs."""

    def __init__(self, job: Job, size: int) -> None:
        self.job = job
        self.size = size
        self.ended: dict[int, JobStatus] = {}
        self.results = _Results(job)
        self.lock = threading.Lock()

    def update(self, status: JobStatus) -> None:
        """Record the tasks that have ended. A task squeue no longer lists (it forgets them
        MinJobAge after they end) while the array still runs has ended too."""
        rows = status.tasks or {}
        pending: set[int] = set()
        running: set[int] = set()
        with self.lock:
            for key, row in rows.items():
                _, _, task = key.partition("_")
                if not task.isdigit():
                    pending |= _task_range(task)
                elif row.final:
                    self.ended.setdefault(int(task), row)
                else:
                    running.add(int(task))
            if not (status.final or rows):
                return
            for index in range(self.size):
                if index not in self.ended and index not in running and index not in pending:
                    # ended long enough ago for squeue to forget it: the results tell
                    self.ended[index] = JobStatus(f"{self.job.id}_{index}", "ENDED")

    def wait(self, index: int, timeout: float | None) -> JobStatus:
        def decide(status: JobStatus) -> JobStatus | None:
            self.update(status)
            return self.ended.get(index)

        with self.lock:
            if index in self.ended:
                return self.ended[index]
        return follow(self.job.client, self.job.id, decide, array=True, timeout=timeout)

    def fetch_ended(self, index: int) -> None:
        """Fetch the results of every ended task not fetched yet (one round trip)."""
        with self.lock:
            ended = sorted(i for i in self.ended if i not in self.results.pickles)
        if index not in self.results.pickles and index not in ended:
            ended.append(index)
        for start in range(0, len(ended), 2000):  # keep the command line short
            self.results.fetch(ended[start : start + 2000], None)


def _task_range(text: str) -> set[int]:
    """The task indexes of squeue's ``[3-7,9:2%4]`` (ranges, steps, a throttle)."""
    found: set[int] = set()
    match = _PENDING.search(text)
    for part in (match.group(1) if match else text).split(","):
        part = part.split("%", 1)[0].strip()
        part, _, step = part.partition(":")
        low, _, high = part.partition("-")
        if low.isdigit() and (high.isdigit() or not high) and (step.isdigit() or not step):
            found.update(range(int(low), int(high or low) + 1, int(step or 1)))
    return found


class FunctionJob:
    """A function submitted by :class:`~pixi_deploy.slurm.Executor` (a job, or one task of a
    ``map_array`` job). ``result()`` returns its value or re-raises its exception."""

    def __init__(
        self, job: Job, index: int | None, tracker: ArrayTracker | None, tasks: int
    ) -> None:
        self.job = job
        self.index = index
        self.tracker = tracker
        self.tasks = tasks  # ranks expected (srun tasks)
        self.id = job.id if index is None else f"{job.id}_{index}"
        self._results = tracker.results if tracker is not None else _Results(job)
        self._ended: JobResult | None = None

    def __repr__(self) -> str:
        return f"FunctionJob({self.id!r})"

    @property
    def job_id(self) -> str:  # submitit's name
        return self.id

    @property
    def state(self) -> str:
        return self.status().state

    def status(self) -> JobStatus:
        return self.job.client.status(self.id)

    def done(self) -> bool:
        """Whether the job has ended (one squeue call; never blocks)."""
        if self._ended is not None:
            return True
        if self.tracker is not None and self.index is not None:
            # the array's rows (a pending task may hide in a compressed range like 12_[3-9])
            self.tracker.update(self.job.client.status(self.job.id))
            return self.index in self.tracker.ended
        status = self.status()
        return status.final or status.state == "UNKNOWN"

    def cancel(self) -> None:
        self.job.client.cancel(self.id)

    def logs(self) -> tuple[str, str]:
        """The whole stdout and stderr of this job (or array task) so far."""
        if self.index is None:
            return self.job.logs()
        return _Results(self.job).fetch([], f"-{self.id}", whole_logs=True)

    def stdout(self) -> str:
        return self.logs()[0]

    def stderr(self) -> str:
        return self.logs()[1]

    def wait(self, timeout: float | None = None) -> JobResult:
        """Block until the job has ended (``timeout``: TimeoutError, the job goes on) and
        return how it ended; never raises for a failed job."""
        if self._ended is not None:
            return self._ended
        if self.tracker is not None and self.index is not None:
            status = self.tracker.wait(self.index, timeout)
            self.tracker.fetch_ended(self.index)
            mine = self._results.pickles.get(self.index, {})
            ok = len(mine) >= self.tasks and all(_kind(p) == "ok" for p in mine.values())
            if ok:
                self._ended = JobResult(self.id, "COMPLETED", 0, None, "", nodes=status.nodes)
            else:
                self._ended = self._failed_task_result(status)
            return self._ended

        def decide(status: JobStatus) -> JobStatus | None:
            self.job.note(status)
            return status if status.final or status.state == "UNKNOWN" else None

        status = follow(self.job.client, self.job.id, decide, timeout=timeout)
        out, err = self._results.fetch([0], "")
        result = states.to_result(
            status, out, err, mem=self.job.mem, time_limit=self.job.time_limit
        )
        if result.state == "NODE_FAIL":
            result.failed_nodes = self.job.failed_nodes(result)
        self._ended = result
        return result

    def _failed_task_result(self, status: JobStatus) -> JobResult:
        """An array task without (all its) results: its logs and what Slurm knows."""
        out, err = self._results.fetch([self.index or 0], f"-{self.id}")
        if not status.final:  # squeue forgot it: ask sacct / scontrol about this task
            status = self.job.client.status(self.id)
        return states.to_result(status, out, err, mem=self.job.mem, time_limit=self.job.time_limit)

    def results(self, timeout: float | None = None) -> list[Any]:
        """The values returned by every task (rank order); raises the lowest rank's
        exception, or UncompletedJobError when the job ended without results."""
        ended = self.wait(timeout)
        pickles = self._results.pickles.get(self.index or 0, {})
        loaded = {rank: _load(data) for rank, data in sorted(pickles.items())}
        for rank, payload in loaded.items():
            if payload[0] == "error":
                _raise_remote(payload, self.id, rank)
        if loaded and len(loaded) >= self.tasks:
            return [payload[1] for payload in loaded.values()]
        detail = ended.message()
        if ended.ok or ended.exit_code == FUNCTION_RAISED:
            detail = f"job {self.id} ended ({ended.state}) without the function's result"
        raise UncompletedJobError(detail, ended)

    def result(self, timeout: float | None = None) -> Any:
        """The function's return value (rank 0's for a job of several tasks)."""
        return self.results(timeout)[0]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The exception the function raised (or why it has no result), else None."""
        try:
            self.results(timeout)
        except TimeoutError:
            raise
        except BaseException as exc:
            return exc
        return None


def _load(data: bytes) -> tuple[Any, ...]:
    import cloudpickle

    try:
        payload = cloudpickle.loads(data)
    except Exception as exc:
        raise SchedulerError(
            f"the function's result could not be unpickled here: {exc}",
            "return plain data (or objects whose classes import here)",
        ) from exc
    if not isinstance(payload, tuple) or payload[0] not in ("ok", "error"):
        raise SchedulerError("a result file of the job is not pixi-deploy's")
    return payload


def _kind(data: bytes) -> str:
    try:
        return str(_load(data)[0])
    except SchedulerError:
        return "bad"


def _raise_remote(payload: tuple[Any, ...], job_id: str, rank: int) -> None:
    _, exc, type_name, message, traceback_text = payload
    cause = RemoteTraceback(traceback_text)
    if isinstance(exc, BaseException):
        exc.add_note(f"raised on the cluster by job {job_id}, task {rank} (remote traceback above)")
        raise exc from cause
    raise RemoteFunctionError(type_name, message, traceback_text) from cause
