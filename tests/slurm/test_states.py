"""Parsing Slurm's answers and rendering job scripts: pure functions, no cluster."""

from __future__ import annotations

import io
import tarfile

import pytest

from pixi_deploy.errors import SchedulerError
from pixi_deploy.slurm import JobResources, JobResult, JobSpec, script, states


def test_parse_sacct_scontrol_and_jobcomp() -> None:
    sacct = states.parse_sacct("31|CANCELLED by 1001|0:0|None\n30|FAILED|3:0|NonZeroExitCode\n")
    assert (sacct["31"].state, sacct["31"].reason) == ("CANCELLED", "by 1001")
    assert (sacct["30"].exit_code, sacct["30"].signal) == (3, None)
    line = "JobId=41 ArrayJobId=40 ArrayTaskId=1 JobState=OUT_OF_MEMORY Reason=OutOfMemory ExitCode=0:125"
    rows = states.parse_key_values(line, "scontrol")
    assert rows["40_1"].state == "OUT_OF_MEMORY" and rows["40_1"].signal == 125
    comp = "JobId=30 UserId=pdtest(1001) JobState=TIMEOUT Partition=debug ExitCode=0:0 "
    assert states.parse_key_values(comp, "jobcomp")["30"].state == "TIMEOUT"


def test_array_status_is_the_worst_task_once_all_ended() -> None:
    rows = states.parse_squeue(
        "7_0|COMPLETED|None\n7_[2-3]|PENDING|JobArrayTaskLimit\n7_1|RUNNING|None\n"
    )
    status = states.combine("7", rows)
    assert status is not None and status.state == "RUNNING" and not states.needs_detail(status)
    done = states.parse_sacct(
        "7_0|COMPLETED|0:0|None\n7_1|FAILED|4:0|None\n7_2|COMPLETED|0:0|None\n"
    )
    final = states.combine("7", done)
    assert final is not None and (final.state, final.exit_code) == ("FAILED", 4)
    assert "7_1" in final.reason
    assert states.combine("70", done) is None


def test_oom_text_in_stderr_makes_out_of_memory() -> None:
    status = states.JobStatus("5", "FAILED", "", 0, 9, "sacct")
    err = "slurmstepd: error: StepId=5.batch exceeded memory limit (600 > 500), being killed"
    result = states.to_result(status, "", err, mem="500M")
    assert result.state == "OUT_OF_MEMORY"
    assert result.message() == "job 5 ran out of memory (--mem=500M); raise --mem"


@pytest.mark.parametrize(
    ("state", "text"),
    [
        ("NODE_FAIL", "its node failed; resubmit"),
        ("PREEMPTED", "preempted"),
        ("CANCELLED", "was cancelled"),
        ("TIMEOUT", "raise --time"),
    ],
)
def test_messages_are_one_line_and_say_what_to_do(state: str, text: str) -> None:
    result = JobResult("9", state, 0, None, "", "", "")
    assert text in result.message() and "\n" not in result.message()
    with pytest.raises(SchedulerError):
        result.raise_for_state()


def test_job_script_directives_and_no_secrets() -> None:
    spec = JobSpec(
        command=["python", "-c", "print('$HOME')"],
        environment_path="/b/envs/abc",
        name="my job",
        resources=JobResources(
            partition="debug",
            mem="1G",
            gpus=2,
            time="1:00:00",
            extra_sbatch=["--exclusive", "mail-type=END"],
        ),
        secrets={"TOKEN": "hunter2"},
        array="0-9%2",
    )
    text = script.job_script(spec, "/b/runs/r1")
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in (
        '#SBATCH --job-name="my job"',
        "#SBATCH --partition=debug",
        "#SBATCH --mem=1G",
        "#SBATCH --gpus=2",
        "#SBATCH --time=1:00:00",
        "#SBATCH --exclusive",
        "#SBATCH --mail-type=END",
        "#SBATCH --array=0-9%2",
        "#SBATCH --output=/b/runs/r1/stdout-%A_%a.log",
    ):
        assert directive in lines
    assert "hunter2" not in text
    assert "python -c 'print('\"'\"'$HOME'\"'\"')'" in text
    with tarfile.open(fileobj=io.BytesIO(script.bundle(spec, "job.sh", text))) as tar:
        member = tar.getmember("secrets.env")
        assert member.mode == 0o600
        assert tar.extractfile(member).read() == b"export TOKEN=hunter2\n"  # type: ignore[union-attr]


def test_bad_specs_are_refused() -> None:
    with pytest.raises(SchedulerError, match="exactly one"):
        JobSpec().check()
    with pytest.raises(SchedulerError, match="relative path"):
        JobSpec(command=["x"], files={"../x": b""}).check()
    with pytest.raises(SchedulerError, match="line break"):
        JobResources(extra_sbatch=["--a\n#SBATCH --b"]).options()
    with pytest.raises(SchedulerError, match="reserved"):
        script.bundle(JobSpec(command=["x"], files={"job.sh": b""}), "job.sh", "")
