"""One Slurm allocation per Dagster run, shared by every process that runs the run's steps.

Dagster's default executor runs each step in its own process, each with its own copy of the
resources; an allocation held in one Python object would be one per step. So the allocation
is recorded on the cluster, in ``<base>/dagster/allocations/<run id>/``:

- ``allocation.json`` names the holder job; a process that finds a live one attaches to it,
  otherwise it submits one (under the folder's ``.lock``, taken with ``mkdir``, so two steps
  starting together submit one allocation, not two);
- every process using it holds a lease file; the last to release it cancels the holder job,
  ``grace`` seconds later when it is a step process of Dagster's multiprocess executor (a
  background timer on the login node that gives the run's next step process time to attach),
  at once otherwise and when a run was interrupted.

An allocation whose processes all died unannounced ends at its time limit.
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
import socket
import threading

from pixi_deploy.errors import SchedulerError
from pixi_deploy.slurm import JobResources, SlurmClient, SlurmSession
from pixi_deploy.transport import RemoteCommandError

# $1 = folder, $2 = lease to add. Waits up to 120 s for the lock, prints allocation.json.
_ENTER = r"""
dir=$1; lease=$2
mkdir -p "$dir/leases" || exit 1
i=0
until mkdir "$dir/.lock" 2>/dev/null; do
  i=$((i+1)); if [ "$i" -ge 1200 ]; then echo "locked: $dir/.lock" >&2; exit 75; fi
  sleep 0.1
done
: > "$dir/leases/$lease"
cat "$dir/allocation.json" 2>/dev/null
true
"""
# $1 = folder, $2 = allocation.json text (empty: keep). Writes it atomically, drops the lock.
_LEAVE_LOCK = r"""
dir=$1; text=$2
if [ -n "$text" ]; then printf '%s\n' "$text" > "$dir/allocation.json.tmp" \
  && mv -f "$dir/allocation.json.tmp" "$dir/allocation.json"; fi
rmdir "$dir/.lock" 2>/dev/null
true
"""
# $1 = folder, $2 = lease, $3 = job id, $4 = grace seconds. Drops the lease; if it was the
# last, cancels the job now (grace 0) or after the grace if nobody attached meanwhile.
_RELEASE = r"""
dir=$1; lease=$2; job=$3; grace=$4
rm -f "$dir/leases/$lease"
cleanup='
d=$1; j=$2
i=0; until mkdir "$d/.lock" 2>/dev/null; do
  [ -d "$d" ] || exit 0; i=$((i+1)); [ "$i" -ge 1200 ] && exit 0; sleep 0.1
done
if [ -z "$(ls -A "$d/leases" 2>/dev/null)" ]; then
  scancel "$j" 2>/dev/null; rm -rf "$d/leases" "$d/allocation.json"; rmdir "$d/.lock"; rmdir "$d"
else
  rmdir "$d/.lock"
fi
true'
if [ -n "$(ls -A "$dir/leases" 2>/dev/null)" ]; then exit 0; fi
if [ "$grace" = 0 ]; then sh -c "$cleanup" cleanup "$dir" "$job"; exit 0; fi
setsid sh -c "sleep $grace; $cleanup" cleanup "$dir" "$job" </dev/null >/dev/null 2>&1 &
true
"""


def teardown_grace(grace: float) -> float:
    """The grace to release with when a step process is done: Dagster's multiprocess executor
    runs each step in a child process (``multiprocessing``), and the run's next step, in
    another child, needs time to attach; a run executed in one process ends when its resources
    are torn down, so nothing comes after and the allocation goes at once."""
    return grace if multiprocessing.parent_process() is not None else 0.0


class SharedAllocation:
    """This process's share of the run's allocation (see the module docstring)."""

    def __init__(
        self,
        client: SlurmClient,
        resources: JobResources,
        *,
        run_id: str,
        name: str,
        max_concurrent_steps: int,
        health_checks: bool = True,
    ) -> None:
        self.client = client
        self.resources = resources
        self.folder = f"{client.base}/dagster/allocations/{run_id}"
        self.name = name
        self.max_concurrent_steps = max_concurrent_steps
        self.health_checks = health_checks
        self.lease = f"{socket.gethostname()}-{secrets.token_hex(6)}"
        self.session: SlurmSession | None = None
        self.attached = False  # True if another process submitted it
        self._lock = threading.Lock()

    def acquire(self) -> SlurmSession:
        """The running allocation: attached to, or submitted now; waits until it runs."""
        try:
            with self._lock:
                if self.session is None:
                    self.session = self._enter()
                session = self.session
        except BaseException:
            self.release(grace=0)
            raise
        try:
            session.wait_until_running()
        except BaseException:
            self.release(grace=0)
            raise
        if self.health_checks:
            self.check_alive()
        return session

    def _enter(self) -> SlurmSession:
        transport = self.client.transport
        try:
            found = transport.run_script(_ENTER, [self.folder, self.lease]).stdout.strip()
        except RemoteCommandError as error:
            raise SchedulerError(
                f"could not take the run's allocation lock {self.folder}/.lock: {error.stderr}",
                "if no step of this run is running, remove that folder",
            ) from None
        session = SlurmSession(
            self.client,
            self.resources,
            max_concurrent_steps=self.max_concurrent_steps,
            name=self.name,
        )
        record = ""
        try:
            job_id = str(json.loads(found).get("job_id", "")) if found else ""
            if job_id and not self.client.status(job_id).final:
                session.job = self.client.job(job_id)
                self.attached = True
            else:
                record = json.dumps({"job_id": session.submit().id})
        except BaseException:
            self._leave_lock("")
            raise  # acquire() drops the lease
        self._leave_lock(record)
        return session

    def _leave_lock(self, record: str) -> None:
        self.client.transport.run_script(_LEAVE_LOCK, [self.folder, record], check=False)

    def check_alive(self) -> None:
        """Health check before a step: the holder job must still be running."""
        session = self.session
        if session is None or session.job is None:
            return
        status = session.job.status()
        if not status.running:
            raise SchedulerError(
                f"the run's allocation (job {session.job.id}) is no longer running "
                f"({status.state}{': ' + status.reason if status.reason else ''})",
                "run the assets again to get a new allocation",
            )

    def release(self, grace: float = 0) -> None:
        """Give up this process's lease; the last one out cancels the allocation."""
        with self._lock:
            session, self.session = self.session, None
        job_id = session.job.id if session is not None and session.job is not None else ""
        self.client.transport.run_script(
            _RELEASE, [self.folder, self.lease, job_id, str(int(max(grace, 0)))], check=False
        )
        if session is not None:
            session.job = None  # the cleanup owns it now; never scancel twice
