"""Reading job states from squeue, sacct, scontrol and the jobcomp file, and mapping them to results.

squeue is cheap and answers for many jobs in one call, but forgets a job ``MinJobAge`` seconds
after it ends and never reports exit codes; sacct has everything when the cluster runs
accounting, but learns of a job's end a moment late; ``scontrol show job`` knows exit codes
until ``MinJobAge``; the jobcomp file (if the site writes one and we may read it) is the last
resort. The parsers here are pure functions so they can be tested on captured output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from pixi_deploy.target import UNMET_STATUS

from .spec import FINAL_STATES, JobResult, JobStatus, unmet_target_line

SQUEUE_FORMAT = "%i|%T|%r|%N"
SACCT_FIELDS = "JobID,State,ExitCode,Reason,NodeList"
# sinfo states of a node that has failed (a trailing * means "not responding")
_FAILED_NODE = re.compile(r"down|drain|fail|\*\Z")
# Memory trouble that Slurm writes into a job's stderr when it does not say OUT_OF_MEMORY
# itself (no cgroups: OverMemoryKill; or a step killed by the cgroup OOM killer).
_OOM_TEXT = re.compile(
    r"exceeded (job )?memory limit|oom-kill|out of memory|oom_kill|Out Of Memory", re.IGNORECASE
)
_KV = re.compile(r"(\w+)=(\S*)")


def normalize_state(raw: str) -> tuple[str, str]:
    """``CANCELLED by 1001`` -> (``CANCELLED``, ``by 1001``); ``COMPLETED+`` -> ``COMPLETED``."""
    word, _, rest = raw.strip().partition(" ")
    return word.rstrip("+").upper(), rest.strip()


def parse_exit_code(raw: str) -> tuple[int | None, int | None]:
    """Slurm's ``EXIT:SIGNAL`` pair; a signal of 0 means none."""
    code, _, sig = raw.strip().partition(":")
    try:
        exit_code = int(code)
    except ValueError:
        return None, None
    try:
        signal = int(sig) if sig else 0
    except ValueError:
        signal = 0
    return exit_code, (signal or None)


def parse_squeue(text: str) -> dict[str, JobStatus]:
    """Rows of ``squeue -h -o '%i|%T|%r|%N'`` keyed by job id (``123`` or ``123_4``)."""
    found: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state, _ = normalize_state(parts[1])
        nodes = parts[3].strip() if len(parts) > 3 else ""
        found[parts[0]] = JobStatus(parts[0], state, parts[2], source="squeue", nodes=nodes)
    return found


def parse_sacct(text: str) -> dict[str, JobStatus]:
    """Rows of ``sacct -n -P -X -o JobID,State,ExitCode,Reason,NodeList``."""
    found: dict[str, JobStatus] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 4 or not parts[0]:
            continue
        state, extra = normalize_state(parts[1])
        code, sig = parse_exit_code(parts[2])
        reason = parts[3] if parts[3] not in ("", "None") else extra
        nodes = parts[4].strip() if len(parts) > 4 and parts[4] != "None assigned" else ""
        found[parts[0]] = JobStatus(parts[0], state, reason, code, sig, source="sacct", nodes=nodes)
    return found


def failed_nodes(sinfo_text: str) -> str:
    """``node2 (node crashed), node3`` from ``sinfo -h -N -o '%N|%T|%E'`` rows of nodes that
    are down, drained, failed or not responding (several partitions repeat a node)."""
    seen: dict[str, str] = {}
    for line in sinfo_text.splitlines():
        name, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if name and _FAILED_NODE.search(state.strip().lower()):
            reason = reason.strip()
            seen[name] = f"{name} ({reason})" if reason and reason != "none" else name
    return ", ".join(seen.values())


def parse_key_values(text: str, source: str) -> dict[str, JobStatus]:
    """One-line ``KEY=VALUE`` records: ``scontrol -o show job`` and jobcomp/filetxt lines."""
    found: dict[str, JobStatus] = {}
    for line in text.splitlines():
        fields = dict(_KV.findall(line))
        job_id = fields.get("JobId")
        if not job_id or "JobState" not in fields:
            continue
        array_job, task = fields.get("ArrayJobId"), fields.get("ArrayTaskId")
        if array_job and task and task not in ("N/A", "4294967294") and "[" not in task:
            job_id = f"{array_job}_{task}"
        state, _ = normalize_state(fields["JobState"])
        code, sig = parse_exit_code(fields.get("ExitCode", ""))
        reason = fields.get("Reason", "")
        nodes = fields.get("NodeList", "")
        found[job_id] = JobStatus(
            job_id,
            state,
            "" if reason == "None" else reason,
            code,
            sig,
            source,
            nodes="" if nodes in ("(null)", "None") else nodes,
        )
    return found


def rows_for(job_id: str, rows: Mapping[str, JobStatus]) -> dict[str, JobStatus]:
    """The rows that belong to a job: itself, its array tasks (``ID_N``, ``ID_[..]``) or the
    components of a heterogeneous job (``ID+N``)."""
    prefixes = (f"{job_id}_", f"{job_id}+")
    return {k: v for k, v in rows.items() if k == job_id or k.startswith(prefixes)}


def combine(job_id: str, rows: Mapping[str, JobStatus]) -> JobStatus | None:
    """One status for a job from its rows; an array's is the worst of its tasks' once all end."""
    mine = rows_for(job_id, rows)
    if not mine:
        return None
    if list(mine) == [job_id]:
        return mine[job_id]
    tasks = dict(sorted(mine.items(), key=lambda kv: _task_order(kv[0])))
    source = next(iter(tasks.values())).source
    if any(not t.final for t in tasks.values()):
        state = "RUNNING" if any(t.running for t in tasks.values()) else "PENDING"
        return JobStatus(job_id, state, "", source=source, tasks=tasks)
    bad = [t for t in tasks.values() if t.state != "COMPLETED" or t.exit_code]
    if not bad:
        return JobStatus(job_id, "COMPLETED", "", 0, None, source, tasks)
    worst = bad[0]
    reason = f"array task {worst.job_id}" + (f": {worst.reason}" if worst.reason else "")
    return JobStatus(job_id, worst.state, reason, worst.exit_code, worst.signal, source, tasks)


def _task_order(key: str) -> tuple[int, str]:
    _, _, task = key.replace("+", "_", 1).partition("_")
    return (int(task), "") if task.isdigit() else (1 << 30, task)


def needs_detail(status: JobStatus | None) -> bool:
    """squeue cannot finish the story: the job is gone from it, or ended with an exit code we
    do not know. COMPLETED needs nothing more: Slurm says COMPLETED only for exit code 0, so a
    successful job costs no sacct/scontrol call (sacct alone takes ~0.1 s)."""
    if status is None:
        return True
    rows = list(status.tasks.values()) or [status]
    if not all(t.final for t in rows):
        return False
    if all(t.state == "COMPLETED" for t in rows):
        for row in (status, *status.tasks.values()):
            row.exit_code = 0 if row.exit_code is None else row.exit_code
        return False
    return True


def to_result(
    status: JobStatus,
    stdout: str,
    stderr: str,
    *,
    mem: str | None = None,
    time_limit: str | None = None,
) -> JobResult:
    """A JobResult, also recognising memory kills Slurm reported only as FAILED/killed."""
    state = status.state
    if state in ("FAILED", "CANCELLED") and _OOM_TEXT.search(stderr[-20000:]):
        state = "OUT_OF_MEMORY"
    if state == "COMPLETED" and status.exit_code:
        state = "FAILED"
    if (
        state == "FAILED"
        and status.exit_code == 0
        and status.signal == 9
        and _OOM_TEXT.search(stderr)
    ):
        state = "OUT_OF_MEMORY"
    reason = status.reason
    if state == "FAILED" and status.exit_code == UNMET_STATUS:
        reason = unmet_target_line(stderr) or reason  # the node's check said why, in one line
    return JobResult(
        job_id=status.job_id,
        state=state,
        exit_code=status.exit_code,
        signal=status.signal,
        reason=reason,
        stdout_tail=stdout,
        stderr_tail=stderr,
        mem=mem,
        time_limit=time_limit,
        nodes=status.nodes,
    )


def unknown(job_id: str) -> JobStatus:
    return JobStatus(
        job_id, "UNKNOWN", "no longer known to squeue, sacct or scontrol", source="none"
    )


def is_final_rows(job_id: str, rows: Mapping[str, JobStatus]) -> bool:
    status = combine(job_id, rows)
    return status is not None and status.state in FINAL_STATES


def unresolved(ids: Sequence[str], rows: Mapping[str, JobStatus]) -> list[str]:
    return [i for i in ids if not is_final_rows(i, rows)]
