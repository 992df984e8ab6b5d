"""SlurmClient: submit, query, cancel and reattach jobs over the process's one SSH connection.

Submitting is one round trip (unpack the run folder from a tar on stdin, sbatch, remember the
run folder by job id). Querying many jobs is one ``squeue``; only jobs squeue cannot finish
describing cost a second call (sacct with accounting, otherwise scontrol and the jobcomp file).
Waiting jobs share one poller thread, so 100 threads waiting on 100 jobs cause one squeue per
interval, not 100.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Sequence

from pixi_deploy.code.checkout import MISSING_MARK, CodeSnapshotMissing
from pixi_deploy.errors import SchedulerError, TransportError
from pixi_deploy.target import UNMET_STATUS
from pixi_deploy.transport import RemoteCommandError, Transport

from . import remote, script, states
from .job import Job
from .spec import JobSpec, JobStatus, unmet_target_line


class SlurmClient:
    """Slurm on the cluster behind ``transport``; runs live under ``base_path/runs``."""

    def __init__(
        self,
        transport: Transport,
        base_path: str,
        *,
        use_sacct: bool | None = None,
        poll_interval: float = 0.5,
        array_poll_interval: float = 1.2,
    ) -> None:
        self.transport = transport
        self.base = transport.expand_path(base_path).rstrip("/") or "/"
        self.poll_interval = poll_interval
        # while an array is followed: one squeue for all its tasks at most this often (a big
        # array makes each call costly for slurmctld; 1.2 s keeps it below one per second)
        self.array_poll_interval = array_poll_interval
        self._use_sacct = use_sacct
        self._jobcomp: str | None = None
        self._probed = False
        self._probe_lock = threading.Lock()
        self.squeue_calls = 0
        self._poller: _Poller | None = None
        self._poller_lock = threading.Lock()

    # -- facts about the cluster ----------------------------------------------------------
    def _probe(self) -> None:
        with self._probe_lock:
            if self._probed:
                return
            out = self.transport.run_script(remote.PROBE, check=False).stdout
            facts = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
            if self._use_sacct is None:
                self._use_sacct = facts.get("sacct") == "1"
            self._jobcomp = facts.get("jobcomp", "").strip() or None
            self._probed = True

    @property
    def use_sacct(self) -> bool:
        """Whether finished jobs are looked up with sacct (detected once unless given)."""
        if self._use_sacct is None:
            self._probe()
        return bool(self._use_sacct)

    # -- jobs -------------------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Write the run folder and sbatch the job script; returns at once (see Job.wait)."""
        spec.check()
        run_id = script.new_run_id()
        run_dir = f"{self.base}/runs/{run_id}"
        text = script.job_script(spec, run_dir)
        data = script.bundle(spec, script.JOB_SCRIPT, text)
        code = spec.code.snapshot_dir if spec.code else ""
        args = [run_dir, spec.environment_path or "", self.base, run_id, code]
        try:
            out = self.transport.run_script(remote.SUBMIT, args, input=data).stdout
        except RemoteCommandError as error:
            raise submit_error(error, spec) from error
        job_id = out.strip().splitlines()[-1] if out.strip() else ""
        if not job_id.replace("_", "").isdigit():
            raise SchedulerError(f"sbatch printed no job id (got {out.strip()[:80]!r})")
        return Job(self, job_id, run_dir, resources=spec.resources, array=spec.array is not None)

    def job(self, job_id: str) -> Job:
        """Reattach to a job submitted earlier (by any process) through its job id."""
        job_id = str(job_id).strip()
        if not job_id.isdigit():
            raise SchedulerError(
                f"{job_id!r} is not a Slurm job id", "pass the number sbatch printed"
            )
        result = self.transport.run_script(remote.REATTACH, [self.base, job_id], check=False)
        lines = result.stdout.splitlines()
        if result.exit_status != 0 or not lines:
            raise SchedulerError(
                f"job {job_id} was not submitted by pixi-deploy under {self.base}",
                "check the job id and SLURM_DEPLOYMENT_BASE_PATH",
            )
        directives = dict(d.split("=", 1) for d in lines[1:] if d.startswith("--") and "=" in d)
        job = Job(self, job_id, lines[0], array="--array" in directives)
        job.mem = directives.get("--mem")
        job.time_limit = directives.get("--time")
        return job

    def states(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """The status of many jobs in one round trip: one squeue for all, and for the ended
        ones sacct (with accounting) plus scontrol/jobcomp in the same remote script."""
        ids = list(dict.fromkeys(str(i) for i in job_ids))
        if not ids:
            return {}
        use_sacct = self.use_sacct
        self._probe()
        self.squeue_calls += 1
        out = self.transport.run_script(
            remote.STATES,
            [",".join(ids), states.SQUEUE_FORMAT, "1" if use_sacct else "0", self._jobcomp or ""],
        ).stdout
        squeue_text, _, rest = out.partition("\035\n")
        sacct_text, _, scontrol_text = rest.partition("\035\n")
        rows = states.parse_squeue(squeue_text)
        sacct_rows = states.parse_sacct(sacct_text) if use_sacct else {}
        scontrol_rows = states.parse_key_values(scontrol_text, "scontrol")
        result: dict[str, JobStatus] = {}
        for job_id in ids:
            status = states.combine(job_id, rows)
            if states.needs_detail(status):
                status = _detail(job_id, status, rows, sacct_rows, scontrol_rows)
            if status is not None:
                result[job_id] = status
        return result

    def status(self, job_id: str) -> JobStatus:
        return self.states([job_id]).get(job_id) or states.unknown(job_id)

    def explained(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        """`states`, where a job that ended because its node cannot run the environment
        (activate.sh's check, exit status `UNMET_STATUS`) has the check's line as its reason:
        what ``pixi-deploy status`` shows. One more round trip per such job (its log)."""
        found = self.states(job_ids)
        for job_id, status in found.items():
            if status.state != "FAILED" or status.exit_code != UNMET_STATUS:
                continue
            try:
                line = unmet_target_line(self.job(job_id).logs()[1])
            except SchedulerError:  # not one of ours (no run folder): Slurm's reason stays
                continue
            if line:
                found[job_id] = dataclasses.replace(status, reason=line)
        return found

    def failed_nodes(self, nodes: str) -> str:
        """Which of ``nodes`` (a hostlist) are down or not responding now, with Slurm's
        reason: ``node2 (node crashed)``; empty if none is (or sinfo cannot tell)."""
        if not nodes.strip(","):
            return ""
        try:
            out = self.transport.run_script(remote.NODE_STATES, [nodes], check=False).stdout
        except TransportError:
            return ""
        return states.failed_nodes(out)

    def cancel(self, job_id: str) -> None:
        """scancel; cancelling a job that already ended is not an error."""
        result = self.transport.run(["scancel", str(job_id)], check=False)
        if result.exit_status != 0 and "already completing or completed" not in result.stderr:
            if "Invalid job id" in result.stderr:
                return
            raise SchedulerError(f"scancel {job_id} failed: {result.stderr.strip()[:200]}")

    # -- shared polling -----------------------------------------------------------------------
    @property
    def poller(self) -> _Poller:
        with self._poller_lock:
            if self._poller is None:
                self._poller = _Poller(self)
            return self._poller


def _detail(
    job_id: str,
    squeue: JobStatus | None,
    squeue_rows: dict[str, JobStatus],
    sacct_rows: dict[str, JobStatus],
    scontrol_rows: dict[str, JobStatus],
) -> JobStatus:
    """Exit codes for an ended job: sacct if it already knows (it learns of an end a moment
    late, task by task for arrays, so it counts only when it covers every row squeue still
    shows), else scontrol (until MinJobAge) or the jobcomp file."""
    status = states.combine(job_id, sacct_rows)
    allocation = status.nodes if status is not None else ""
    known = states.rows_for(job_id, squeue_rows)
    if status is not None and status.final and all(k in sacct_rows or "[" in k for k in known):
        return _keep_facts(status, squeue, allocation)
    status = states.combine(job_id, scontrol_rows)
    if status is not None and status.final:
        return _keep_facts(status, squeue, allocation)
    return squeue if squeue is not None else states.unknown(job_id)


def _keep_facts(status: JobStatus, squeue: JobStatus | None, allocation: str) -> JobStatus:
    """squeue's reason for an ended job is slurmctld's own, current one (e.g.
    DependencyNeverSatisfied for a job Slurm cancelled), where sacct has none (``None``) or the
    one it recorded a moment before (``Dependency``): keep squeue's. The nodes are the
    allocation's as sacct recorded it: after a node failure squeue and scontrol may list only
    the nodes that are left."""
    has_reason = squeue is not None and squeue.reason not in ("", "None")
    if squeue is not None and has_reason and (squeue.final or not status.reason):
        status.reason = squeue.reason
    status.nodes = allocation or status.nodes or (squeue.nodes if squeue else "")
    return status


def submit_error(error: RemoteCommandError, spec: JobSpec) -> SchedulerError:
    text = error.stderr.strip()
    if MISSING_MARK in text and spec.code is not None:
        return CodeSnapshotMissing(
            f"the code snapshot {spec.code.snapshot} is not on the cluster (pruned)",
            "submit again: pixi-deploy sends it",
        )
    if "pixi-deploy-missing-environment" in text:
        return SchedulerError(
            f"the environment {spec.environment_path} does not exist on the cluster "
            "(pruned or never deployed)",
            "deploy it again with `pixi-deploy deploy --target ssh`",
        )
    lines = [line for line in text.splitlines() if line.strip()]
    detail = " ".join(lines[-1].split()) if lines else f"exit status {error.exit_status}"
    return SchedulerError(f"sbatch refused the job: {detail}", "fix the option it names")


class _Poller:
    """One thread asking for the states of all jobs being waited on, every interval.

    Waiters read ``latest`` and block on ``changed``; a lost connection is retried (the
    transport reconnects) and only reported to waiters after ``give_up`` seconds.
    """

    def __init__(self, client: SlurmClient, give_up: float = 180.0) -> None:
        self.client = client
        self.give_up = give_up
        self.changed = threading.Condition()
        self.latest: dict[str, JobStatus] = {}
        self.generation = 0
        self.error: BaseException | None = None
        self._watched: dict[str, int] = {}
        self._arrays: set[str] = set()
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str, array: bool = False) -> None:
        with self.changed:
            self._watched[job_id] = self._watched.get(job_id, 0) + 1
            if array:
                self._arrays.add(job_id)
            if self._thread is None or not self._thread.is_alive():
                self.error = None
                self._thread = threading.Thread(
                    target=self._run, name="pixi-deploy-squeue", daemon=True
                )
                self._thread.start()

    def unwatch(self, job_id: str) -> None:
        with self.changed:
            count = self._watched.get(job_id, 0) - 1
            if count <= 0:
                self._watched.pop(job_id, None)
                self._arrays.discard(job_id)
                self.latest.pop(job_id, None)
            else:
                self._watched[job_id] = count

    def _run(self) -> None:
        failing_since: float | None = None
        while True:
            with self.changed:
                ids = list(self._watched)
                if not ids:
                    self._thread = None
                    return
                interval = self.client.poll_interval
                if self._arrays:
                    interval = max(interval, self.client.array_poll_interval)
            started = time.monotonic()
            try:
                found = self.client.states(ids)
                failing_since = None
            except TransportError as error:
                failing_since = failing_since or started
                if started - failing_since > self.give_up:
                    with self.changed:
                        self.error = error
                        self.changed.notify_all()
                time.sleep(self.client.poll_interval)
                continue
            except BaseException as error:  # a bug: tell the waiters rather than hang them
                with self.changed:
                    self.error = error
                    self.changed.notify_all()
                    self._thread = None
                return
            with self.changed:
                self.latest.update(found)
                self.generation += 1
                self.changed.notify_all()
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
