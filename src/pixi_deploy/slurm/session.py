"""SlurmSession: hold one allocation and run many ``srun`` steps in it without queueing again.

Interactive and pipeline work often runs many short commands; queueing each as its own job
costs scheduler latency every time. A session submits one holder job (``sleep``) and runs each
command as a step (``srun --jobid=ID --overlap``), streamed back live over the SSH connection.
A semaphore caps concurrent steps. The allocation is released by close(), which the context
manager also calls when the body raises, so an error never leaves a job burning CPU hours.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from types import TracebackType

from pixi_deploy.errors import SchedulerError
from pixi_deploy.transport import RemoteCommandError

from . import remote, script
from .client import SlurmClient, submit_error
from .job import Job
from .spec import JobResources, JobResult, JobSpec

LineCallback = Callable[[str], object]
_TAIL_LINES = 200


def step_options(resources: JobResources) -> list[str]:
    """srun options for a step: the per-step sizes only (partition, account... are the job's).

    ``nodelist`` places the step on chosen nodes of the allocation; without ``nodes`` srun
    then takes as many nodes as the list names. A step spanning nodes needs a task count
    (``ntasks`` or ``ntasks_per_node``); one task per node is the default."""
    out = []
    if resources.nodes or not resources.nodelist:
        out.append(f"--nodes={resources.nodes or 1}")
    if resources.ntasks or not resources.ntasks_per_node:
        out.append(f"--ntasks={resources.ntasks or resources.nodes or 1}")
    if resources.ntasks_per_node:
        out.append(f"--ntasks-per-node={resources.ntasks_per_node}")
    if resources.nodelist:
        out.append(f"--nodelist={resources.nodelist}")
    if resources.cpus_per_task:
        out.append(f"--cpus-per-task={resources.cpus_per_task}")
    if resources.mem:
        out.append(f"--mem={resources.mem}")
    if resources.gpus not in (None, ""):
        out.append(f"--gpus={resources.gpus}")
    if resources.gpus_per_node:
        out.append(f"--gres=gpu:{resources.gpus_per_node}")
    if resources.time:
        out.append(f"--time={resources.time}")
    return out


class SlurmSession:
    """One allocation, many steps. Use as a context manager, or call start()/close().

    With ``components`` the allocation is a heterogeneous job: ``resources`` is component 0,
    ``components[i]`` component i+1, and ``run(spec, het_group=i)`` runs a step in one of them.
    """

    def __init__(
        self,
        client: SlurmClient,
        resources: JobResources,
        *,
        max_concurrent_steps: int = 4,
        name: str = "pixi-deploy-session",
        start_timeout: float | None = None,
        components: list[JobResources] | None = None,
    ) -> None:
        if max_concurrent_steps < 1:
            raise SchedulerError("max_concurrent_steps must be at least 1")
        self.client = client
        self.resources = resources
        self.components = list(components or [])
        self.name = name
        self.start_timeout = start_timeout
        self.job: Job | None = None
        self._steps = threading.BoundedSemaphore(max_concurrent_steps)
        self.max_concurrent_steps = max_concurrent_steps
        self._active = 0
        self.peak_concurrent_steps = 0
        self._count_lock = threading.Lock()

    def start(self) -> None:
        """Submit the holder job and wait until it runs (queue time is not limited unless
        ``start_timeout`` is given)."""
        if self.job is not None:
            return
        self.submit()
        self.wait_until_running()

    def submit(self) -> Job:
        """Submit the holder job without waiting for it (see wait_until_running)."""
        if self.job is None:
            holder = JobSpec(
                script="exec sleep 2147483647",
                name=self.name,
                resources=self.resources,
                het_components=self.components,
            )
            self.job = self.client.submit(holder)
        return self.job

    def wait_until_running(self) -> None:
        """Wait for the holder job (submitted here or attached to) to run; releases it if it
        ends first or does not start within ``start_timeout``."""
        assert self.job is not None
        job = self.job
        deadline = None if self.start_timeout is None else time.monotonic() + self.start_timeout
        try:
            while True:
                status = job.status()
                if status.running:
                    return
                if status.final or status.state == "UNKNOWN":
                    raise SchedulerError(
                        f"the session's allocation (job {job.id}) ended before it started: "
                        + job.result(status).message()
                    )
                if deadline is not None and time.monotonic() > deadline:
                    raise SchedulerError(
                        f"the session's allocation (job {job.id}) did not start within "
                        f"{self.start_timeout:g}s ({status.state}: {status.reason})",
                        "ask for fewer resources or raise start_timeout",
                    )
                time.sleep(0.1)
        except BaseException:
            self.close()
            raise

    def run(
        self,
        spec: JobSpec,
        *,
        timeout: float | None = None,
        on_stdout: LineCallback | None = None,
        on_stderr: LineCallback | None = None,
        het_group: int | None = None,
    ) -> JobResult:
        """Run one step in the allocation and return how it ended (never raises for a failed
        step: see JobResult.raise_for_state). Ctrl-C stops the step and re-raises."""
        if het_group is not None and not 0 <= het_group <= len(self.components):
            raise SchedulerError(
                f"het_group {het_group} is not a component of this allocation "
                f"(0-{len(self.components)})"
            )
        if self.job is None:
            self.start()
        assert self.job is not None
        spec.check()
        run_id = script.new_run_id()
        run_dir = f"{self.client.base}/runs/{run_id}"
        data = script.bundle(spec, script.STEP_SCRIPT, script.step_script(spec, run_dir))
        with self._steps:
            with self._count_lock:
                self._active += 1
                self.peak_concurrent_steps = max(self.peak_concurrent_steps, self._active)
            try:
                return self._run_step(spec, run_dir, data, timeout, on_stdout, on_stderr, het_group)
            finally:
                with self._count_lock:
                    self._active -= 1

    def _run_step(
        self,
        spec: JobSpec,
        run_dir: str,
        data: bytes,
        timeout: float | None,
        on_stdout: LineCallback | None,
        on_stderr: LineCallback | None,
        het_group: int | None = None,
    ) -> JobResult:
        assert self.job is not None
        transport = self.client.transport
        try:
            code = spec.code.snapshot_dir if spec.code else ""
            transport.run_script(
                remote.PREPARE, [run_dir, spec.environment_path or "", code], input=data
            )
        except RemoteCommandError as error:
            raise submit_error(error, spec) from error
        out: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        err: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)

        def got_out(line: str) -> None:
            out.append(line)
            if on_stdout is not None:
                on_stdout(line)

        def got_err(line: str) -> None:
            err.append(line)
            if on_stderr is not None:
                on_stderr(line)

        argv = [
            "srun",
            f"--jobid={self.job.id}",
            *([f"--het-group={het_group}"] if het_group is not None else []),
            "--overlap",
            f"--job-name={spec.name}",
            *step_options(spec.resources),
            "bash",
            f"{run_dir}/{script.STEP_SCRIPT}",
        ]
        status = transport.stream(argv, got_out, got_err, timeout=timeout)
        transport.run(["rm", "-f", "--", f"{run_dir}/{script.SECRETS_FILE}"], check=False)
        return _step_result(
            f"{self.job.id} step {run_dir.rsplit('/', 1)[-1]}",
            status,
            "\n".join(out),
            "\n".join(err),
            spec,
            timeout,
        )

    def close(self) -> None:
        """Release the allocation (scancel); safe to call twice."""
        job, self.job = self.job, None
        if job is not None:
            job.cancel()

    def __enter__(self) -> SlurmSession:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _step_result(
    step_id: str,
    status: int | None,
    stdout: str,
    stderr: str,
    spec: JobSpec,
    timeout: float | None,
) -> JobResult:
    """Map srun's exit status and slurmstepd's messages to a JobResult."""
    mem, limit = spec.resources.mem, spec.resources.time
    lowered = stderr.lower()
    if status is None:
        reason = (
            f"ran longer than the {timeout:g}s timeout; stopped by pixi-deploy" if timeout else ""
        )
        return JobResult(step_id, "TIMEOUT", None, None, reason, stdout, stderr, mem, limit)
    signal: int | None = None
    exit_code: int | None = status
    if "oom-kill" in lowered or "exceeded memory limit" in lowered or "out of memory" in lowered:
        state = "OUT_OF_MEMORY"
    elif "due to time limit" in lowered:
        state = "TIMEOUT"
    elif "cancelled at" in lowered:
        state = "CANCELLED"
    elif status == 0:
        state = "COMPLETED"
    else:
        state = "FAILED"
        if status > 128:
            signal, exit_code = status - 128, None
    return JobResult(step_id, state, exit_code, signal, "", stdout, stderr, mem, limit)
