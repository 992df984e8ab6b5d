"""What a job asks for (JobSpec, JobResources) and what it ended as (JobStatus, JobResult).

These are plain dataclasses so that the CLI, the Dagster resources and tests build them the same
way, and so that a result can be printed as JSON. The one-line messages for failed states live
here, next to the states they describe, because both the CLI and Python callers raise them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pixi_deploy.errors import SchedulerError
from pixi_deploy.target import UNMET_STATUS

if TYPE_CHECKING:
    from pixi_deploy.code.checkout import CodeCheckout
    from pixi_deploy.launchers import Launcher

# States after which a job never changes again (squeue/sacct/scontrol spellings).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "OUT_OF_MEMORY",
        "TIMEOUT",
        "NODE_FAIL",
        "CANCELLED",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
        "REVOKED",
    }
)
ACTIVE_STATES = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "SUSPENDED", "STOPPED"}
)


@dataclass
class JobResources:
    """sbatch options; None means "the cluster's default". ``extra_sbatch`` passes lines through.

    ``gpus`` is per job (``--gpus``), ``gpus_per_node`` per node (``--gres=gpu:N``, what
    Slurm sites and dagster-slurm mean by "GPUs per node"). ``signal`` is sbatch's
    ``--signal`` value, e.g. ``B:TERM@120`` (the batch shell gets SIGTERM 120 s before the
    time limit).
    """

    partition: str | None = None
    nodes: int | None = None
    ntasks: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    gpus: str | int | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    extra_sbatch: list[str] = field(default_factory=list)
    gpus_per_node: int | None = None
    # multi-node and fault handling (issue 17)
    ntasks_per_node: int | None = None
    nodelist: str | None = None  # --nodelist: these nodes (a session step: where it runs)
    requeue: bool | None = None  # --requeue / --no-requeue (None: the cluster's JobRequeue)
    signal: str | None = None  # e.g. "TERM@60": the command gets SIGTERM 60 s before --time

    def options(self) -> list[str]:
        """The ``--name=value`` options, in a stable order (also used for srun steps)."""
        pairs: list[tuple[str, object]] = [
            ("partition", self.partition),
            ("nodes", self.nodes),
            ("ntasks", self.ntasks),
            ("cpus-per-task", self.cpus_per_task),
            ("mem", self.mem),
            ("gpus", self.gpus),
            ("gres", f"gpu:{self.gpus_per_node}" if self.gpus_per_node else None),
            ("time", self.time),
            ("account", self.account),
            ("qos", self.qos),
            ("reservation", self.reservation),
            ("constraint", self.constraint),
        ]
        pairs += [("ntasks-per-node", self.ntasks_per_node), ("nodelist", self.nodelist)]
        out = [f"--{name}={value}" for name, value in pairs if value not in (None, "")]
        if self.requeue is not None:
            out.append("--requeue" if self.requeue else "--no-requeue")
        if self.signal not in (None, ""):
            name, seconds = parse_signal(str(self.signal))
            # B: signals the batch shell, which hands the signal on to the command
            # (launchers.bash.forward_signal); without B: Slurm signals srun steps only
            out.append(f"--signal=B:{name}@{seconds}")
        for extra in self.extra_sbatch:
            extra = extra.strip()
            if extra:
                out.append(extra if extra.startswith("-") else f"--{extra}")
        for option in out:
            if "\n" in option or "\r" in option or "\0" in option:
                raise SchedulerError(
                    f"the sbatch option {option!r} contains a line break",
                    "pass each option as one line",
                )
        return out


_SIGNAL = re.compile(r"(?:B:)?(?:SIG)?([A-Z][A-Z0-9]*|[0-9]+)(?:@([0-9]+))?\Z")
_DEPENDENCY_TYPES = "after|afterany|afterburstbuffer|aftercorr|afternotok|afterok"
_DEPENDENCY_ITEM = rf"(?:(?:{_DEPENDENCY_TYPES})(?::[0-9]+(?:_[0-9]+)?(?:\+[0-9]+)?)+|singleton)"
_DEPENDENCY = re.compile(
    rf"{_DEPENDENCY_ITEM}(?:,{_DEPENDENCY_ITEM})*\Z|{_DEPENDENCY_ITEM}(?:\?{_DEPENDENCY_ITEM})*\Z"
)


def parse_signal(text: str) -> tuple[str, int]:
    """``"TERM@60"`` / ``"SIGUSR1@120"`` / ``"B:TERM"`` -> (``"TERM"``, seconds before the time
    limit; Slurm's default 60). Numbers stay numbers (``"15@30"``)."""
    match = _SIGNAL.match(text.strip().upper())
    if match is None:
        raise SchedulerError(
            f"--signal {text!r} is not a signal spec",
            "use NAME@SECONDS, e.g. TERM@60 (SIGTERM 60 s before the time limit)",
        )
    return match.group(1), int(match.group(2) or 60)


def check_dependency(text: str) -> str:
    """Slurm's ``--dependency`` syntax (``afterok:12:13``, ``afterany:12,afterok:14``,
    ``singleton``...), refused here with one clear line rather than by sbatch."""
    text = text.strip()
    if not _DEPENDENCY.match(text):
        raise SchedulerError(
            f"--dependency {text!r} is not a Slurm dependency",
            "use TYPE:JOBID[:JOBID...] with TYPE one of "
            + ", ".join(_DEPENDENCY_TYPES.split("|"))
            + " (join several with , for all or ? for any), or singleton",
        )
    return text


def dependency_on(after: Sequence[object], kind: str = "afterok") -> str:
    """``afterok:ID:ID`` for jobs (anything with an ``id``) or job ids."""
    ids = [str(getattr(job, "id", job)).strip() for job in after]
    if not ids:
        raise SchedulerError("`after` names no job", "pass the jobs this one waits for")
    return check_dependency(f"{kind}:" + ":".join(ids))


@dataclass
class JobSpec:
    """One run: a command (argv) or a bash script body, in a deployed environment or none."""

    command: Sequence[str] | None = None
    script: str | None = None
    environment_path: str | None = None
    name: str = "pixi-deploy"
    resources: JobResources = field(default_factory=JobResources)
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    array: str | None = None
    files: dict[str, bytes] = field(default_factory=dict)
    launcher: Launcher | None = None
    #: The code snapshot the job gets a working copy of (its PIXI_PROJECT_ROOT), or none.
    code: CodeCheckout | None = None
    # further components of a heterogeneous job (``resources`` is the first one)
    het_components: list[JobResources] = field(default_factory=list)
    dependency: str | None = None  # Slurm's --dependency, e.g. "afterok:123:124"

    def check(self) -> None:
        """Refuse specs that cannot run before anything is sent to the cluster."""
        if (self.command is None) == (self.script is None):
            raise SchedulerError("a job needs exactly one of `command` or `script`")
        if self.command is not None and (isinstance(self.command, str) or not self.command):
            raise SchedulerError(
                "the job command must be a non-empty argument list", "e.g. ['python', 'x.py']"
            )
        if self.dependency is not None:
            self.dependency = check_dependency(self.dependency)
        for name in self.files:
            parts = name.split("/")
            if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
                raise SchedulerError(
                    f"payload file name {name!r} must be a relative path inside the run dir"
                )


@dataclass
class JobStatus:
    """Where a job is now. ``state`` is Slurm's word (PENDING, RUNNING, COMPLETED, ...)."""

    job_id: str
    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    source: str = "squeue"  # which command told us: squeue, sacct, scontrol, jobcomp
    tasks: dict[str, JobStatus] = field(default_factory=dict)  # array tasks
    nodes: str = ""  # the nodes it runs or ran on (Slurm's hostlist, e.g. node[1-2])

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def running(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def pending(self) -> bool:
        return not self.final and not self.running


@dataclass
class JobResult:
    """How a job ended, with the tails of its output for error messages."""

    job_id: str
    state: str
    exit_code: int | None
    signal: int | None
    reason: str
    stdout_tail: str = ""
    stderr_tail: str = ""
    mem: str | None = None
    time_limit: str | None = None
    nodes: str = ""  # where it ran (hostlist)
    failed_nodes: str = ""  # NODE_FAIL: the nodes that were down, e.g. "node2 (node crashed)"

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and (self.exit_code or 0) == 0

    def message(self) -> str:
        """One line saying what happened and what to do about it."""
        jid = f"job {self.job_id}"
        tail = _last_line(self.stderr_tail)
        detail = f": {tail}" if tail else ""
        state = self.state
        if state == "COMPLETED" and not self.exit_code:
            return f"{jid} completed"
        if state == "OUT_OF_MEMORY":
            mem = f" (--mem={self.mem})" if self.mem else ""
            return f"{jid} ran out of memory{mem}; raise --mem"
        if state == "TIMEOUT":
            limit = f" ({self.time_limit})" if self.time_limit else ""
            return f"{jid} hit its time limit{limit}; raise --time{self.reason_suffix()}"
        if state == "CANCELLED" and self.reason == "DependencyNeverSatisfied":
            return (
                f"{jid} never ran: a job it depends on did not end as its --dependency requires"
                " (DependencyNeverSatisfied); fix and rerun that job, then resubmit this one"
            )
        if state == "CANCELLED":
            return f"{jid} was cancelled{self.reason_suffix()}"
        if state == "NODE_FAIL":
            if self.failed_nodes:
                where = f"its node {self.failed_nodes} failed"
            elif self.nodes:
                where = f"one of its nodes ({self.nodes}) failed"
            else:
                where = "its node failed"
            return f"{jid} failed because {where}; resubmit it (--requeue has Slurm rerun it)"
        if state == "PREEMPTED":
            return f"{jid} was preempted by a higher-priority job; resubmit it or use another qos"
        if state == "BOOT_FAIL":
            return f"{jid} could not start because its node failed to boot; resubmit it"
        if state == "DEADLINE":
            return f"{jid} missed its deadline; resubmit it with a later --deadline"
        if self.signal:
            return f"{jid} was killed by signal {self.signal}{detail}"
        if unmet_target(self):
            return (
                f"{jid} failed before its command ran: {self.reason}; submit it to nodes that "
                "provide this (partition, --constraint), or lock the environment for them"
            )
        code = self.exit_code if self.exit_code is not None else "unknown"
        return f"{jid} failed with exit code {code}{detail}"

    def reason_suffix(self) -> str:
        # Slurm's bare reason words repeat the state; only our own explanations add something
        redundant = ("", "None", "TimeLimit", "OutOfMemory", "NonZeroExitCode")
        return "" if self.reason in redundant else f" ({self.reason})"

    def raise_for_state(self) -> None:
        """Raise SchedulerError (exit code 8) unless the job completed with exit code 0."""
        if not self.ok:
            raise SchedulerError(self.message())


def unmet_target(result: JobResult) -> bool:
    """Did the job end because its node cannot run the environment (activate.sh's check)?
    `states.to_result` then puts the check's line into ``reason``."""
    return result.exit_code == UNMET_STATUS and " cannot run environment " in result.reason


def unmet_target_line(stderr: str) -> str:
    """The shell check's one line (`pixi_deploy.target.shell_check`) in a job's stderr, without
    its ``pixi-deploy:`` mark; "" when there is none."""
    for line in reversed(stderr.strip().splitlines()):
        if line.startswith("pixi-deploy: ") and " cannot run environment " in line:
            return _last_line(line.removeprefix("pixi-deploy: "), 300)
    return ""


def _last_line(text: str, limit: int = 200) -> str:
    for line in reversed(text.strip().splitlines()):
        line = " ".join(line.split())
        if line:
            return line if len(line) <= limit else line[: limit - 1] + "…"
    return ""
