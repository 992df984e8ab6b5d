"""``pixi-deploy run --target ssh``: a command on the login node, as a job would run it.

The run gets what a Slurm job gets (its folder ``BASE/runs/<run-id>/``, the environment's
in-use lock and activation, its own working copy of the code snapshot, the same script), but
the script runs at once on the login node over the SSH connection instead of going through
``sbatch``: output streams back line by line and its exit status is the run's.

Stopping it must not leave work behind on a shared login node. The script runs in a session
of its own (``setsid``), so the whole process tree is one process group; closing our end of the
channel (Ctrl-C, SIGTERM, a lost connection) makes the transport's watchdog signal the runner,
which sends SIGTERM to that group, then SIGKILL to whatever is left 10 seconds later.
"""

from __future__ import annotations

from collections.abc import Callable

from pixi_deploy.errors import SchedulerError
from pixi_deploy.transport import ConnectionLostError, RemoteCommandError, Transport

from . import remote, script
from .client import submit_error
from .spec import JobSpec

#: seconds between SIGTERM and SIGKILL of a stopped run's processes
KILL_GRACE = 10

# Run the prepared step script in a new session; a TERM/HUP/INT (the watchdog's kill) goes on
# to the session's whole process group. The delayed SIGKILL runs detached from the channel
# (its output to /dev/null), so it never holds the SSH channel open. (dash's kill takes no
# `--`: `kill -SIG -PGID` is the spelling every sh knows.)  $1 = run dir
RUN = rf"""
setsid bash "$1/{script.STEP_SCRIPT}" </dev/null &
child=$!
stop() {{
  kill -TERM "-$child" 2>/dev/null
  ( sleep {KILL_GRACE}; kill -KILL "-$child" ) >/dev/null 2>&1 </dev/null &
}}
trap stop TERM HUP INT
while :; do
  wait "$child"; rc=$?
  kill -0 "$child" 2>/dev/null || break
done
exit "$rc"
"""

LineCallback = Callable[[str], None]


def run_on_login_node(
    transport: Transport,
    base: str,
    spec: JobSpec,
    on_stdout: LineCallback,
    on_stderr: LineCallback,
    on_start: Callable[[str], None] | None = None,
) -> int:
    """Prepare the run folder (one round trip; a pruned code snapshot raises
    CodeSnapshotMissing before anything runs), then run and follow it; returns its exit
    status. ``on_start`` is told the run folder."""
    spec.check()
    run_dir = f"{base}/runs/{script.new_run_id()}"
    data = script.bundle(spec, script.STEP_SCRIPT, script.step_script(spec, run_dir))
    code = spec.code.snapshot_dir if spec.code else ""
    try:
        transport.run_script(
            remote.PREPARE, [run_dir, spec.environment_path or "", code], input=data
        )
    except RemoteCommandError as error:
        raise submit_error(error, spec) from error
    if on_start is not None:
        on_start(run_dir)
    try:
        status = transport.stream(
            ["sh", "-c", RUN, "pixi-deploy-run", run_dir], on_stdout, on_stderr
        )
    except ConnectionLostError as error:  # the watchdog saw the channel close: the run stops
        raise ConnectionLostError(
            f"the SSH connection was lost during the run in {run_dir}, which stops it on the "
            "login node",
            "run it again (or submit it as a job, which a lost connection does not stop)",
        ) from error
    if status is None:  # only a stop or timeout ends a stream without a status
        raise SchedulerError(f"the run in {run_dir} was stopped")
    return status
