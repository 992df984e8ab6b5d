"""Pure pieces of the multi-node work, no cluster: host lists, ranks, node failure text,
signal and dependency options, requeue attempt logs, result frames, array task tracking,
and the scripts that hand signals on and watch Ray's nodes (run here with bash)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixi_deploy.errors import SchedulerError
from pixi_deploy.launchers import BashLauncher, RayLauncher
from pixi_deploy.slurm import JobEnvironment, JobResources, JobResult, JobSpec, script, states
from pixi_deploy.slurm.function_job import parse_frames
from pixi_deploy.slurm.job import log_order
from pixi_deploy.slurm.jobenv import expand_hostlist
from pixi_deploy.slurm.session import step_options
from pixi_deploy.slurm.spec import JobStatus, parse_signal


def test_expand_hostlist() -> None:
    assert expand_hostlist("node[1-3]") == ["node1", "node2", "node3"]
    assert expand_hostlist("gpu[08-10]a,localhost") == ["gpu08a", "gpu09a", "gpu10a", "localhost"]
    assert expand_hostlist("r[1-2]n[1,3]") == ["r1n1", "r1n3", "r2n1", "r2n3"]
    assert expand_hostlist("single") == ["single"]
    with pytest.raises(ValueError, match="not a Slurm host list"):
        expand_hostlist("node[a-b]")


def test_job_environment_from_slurm_variables() -> None:
    env = JobEnvironment(
        {
            "SLURM_JOB_ID": "12",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "4",
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NODEID": "1",
            "SLURM_JOB_NODELIST": "node[1-2]",
            "SLURMD_NODENAME": "node2",
        }
    )
    assert (env.job_id, env.global_rank, env.local_rank, env.num_tasks) == ("12", 3, 1, 4)
    assert (env.num_nodes, env.node, env.hostnames, env.hostname) == (
        2,
        1,
        ["node1", "node2"],
        "node2",
    )
    task = JobEnvironment(
        {"SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "5", "SLURM_JOB_ID": "9"}
    )
    assert (task.job_id, task.array_task_id, task.global_rank, task.num_tasks) == ("7_5", 5, 0, 1)


def test_node_fail_names_the_failed_node() -> None:
    sinfo = "node1|idle|none\nnode2|down*|node crashed\nnode2|down*|node crashed\nnode3|drained|x\n"
    assert states.failed_nodes(sinfo) == "node2 (node crashed), node3 (x)"
    assert states.failed_nodes("node1|idle|none\n") == ""
    rows = states.parse_squeue("5|NODE_FAIL|NodeDown|node[1-2]\n")
    assert rows["5"].nodes == "node[1-2]"
    assert states.parse_sacct("5|NODE_FAIL|0:0|None|node[1-2]\n")["5"].nodes == "node[1-2]"
    result = JobResult("5", "NODE_FAIL", 0, None, "NodeDown", nodes="node[1-2]")
    assert "one of its nodes (node[1-2]) failed" in result.message()
    result.failed_nodes = "node2 (node crashed)"
    assert result.message() == (
        "job 5 failed because its node node2 (node crashed) failed; resubmit it"
        " (--requeue has Slurm rerun it)"
    )
    never = JobResult("6", "CANCELLED", None, None, "DependencyNeverSatisfied")
    assert "never ran" in never.message() and "DependencyNeverSatisfied" in never.message()


def test_signal_requeue_and_node_options() -> None:
    assert parse_signal("sigusr1@120") == ("USR1", 120)
    assert parse_signal("B:TERM") == ("TERM", 60)
    with pytest.raises(SchedulerError, match="is not a signal spec"):
        parse_signal("TERM@soon")
    options = JobResources(
        nodes=2, ntasks_per_node=2, nodelist="node[1-2]", requeue=True, signal="TERM@30"
    ).options()
    assert options == [
        "--nodes=2",
        "--ntasks-per-node=2",
        "--nodelist=node[1-2]",
        "--requeue",
        "--signal=B:TERM@30",
    ]
    assert "--no-requeue" in JobResources(requeue=False).options()
    # session steps: a chosen node, or spanning nodes with a task per node by default
    assert step_options(JobResources(nodelist="node2")) == ["--ntasks=1", "--nodelist=node2"]
    assert step_options(JobResources(nodes=2)) == ["--nodes=2", "--ntasks=2"]
    assert step_options(JobResources(nodes=2, ntasks_per_node=2)) == [
        "--nodes=2",
        "--ntasks-per-node=2",
    ]


def test_requeueable_job_script_keeps_attempts_apart() -> None:
    spec = JobSpec(command=["true"], resources=JobResources(requeue=True), dependency="afterok:4")
    text = script.job_script(spec, "/base/runs/r1")
    assert "#SBATCH --open-mode=append" in text and "#SBATCH --requeue" in text
    assert "#SBATCH --dependency=afterok:4" in text and "#SBATCH --kill-on-invalid-dep=yes" in text
    assert '"stdout.attempt-$__pd_attempt.log"' in text
    plain = script.job_script(JobSpec(command=["true"]), "/base/runs/r1")
    assert "open-mode" not in plain and "__pd_attempt" not in plain and "dependency" not in plain
    names = ["stdout.attempt-2.log", "stdout.log", "stderr.attempt-1.log", "stdout-9_10.log"]
    names += ["stdout-9_2.log", "job.sh"]
    order = sorted((key, n) for n in names if (key := log_order(n)) is not None)
    assert [n for _, n in order] == [
        "stdout.log",
        "stderr.attempt-1.log",
        "stdout.attempt-2.log",
        "stdout-9_2.log",
        "stdout-9_10.log",
    ]


def test_result_frames() -> None:
    data = b"\036result-0-0.pkl 5\n\x00\036ab\n\036stdout.log 0\n"
    assert parse_frames(data) == {"result-0-0.pkl": b"\x00\036ab\n", "stdout.log": b""}
    with pytest.raises(SchedulerError, match="garbled"):
        parse_frames(b"junk")


def test_array_tracker_sees_ended_pending_and_forgotten_tasks() -> None:
    from pixi_deploy.slurm.function_job import ArrayTracker

    class FakeJob:  # only id and run_dir are read by update()
        id, run_dir, client = "7", "/x", None

    tracker = ArrayTracker(FakeJob(), 6)  # type: ignore[arg-type]
    rows = states.parse_squeue(
        "7_0|COMPLETED|None|n1\n7_1|RUNNING|None|n1\n7_[4-5%2]|PENDING|JobArrayTaskLimit|\n"
    )
    tracker.update(states.combine("7", rows) or JobStatus("7", "PENDING"))
    # 0 ended; 1 runs; 4, 5 pending; 2 and 3 are listed nowhere any more: they ended
    assert sorted(tracker.ended) == [0, 2, 3]
    assert tracker.ended[2].state == "ENDED"
    from pixi_deploy.slurm.function_job import _task_range

    assert _task_range("7_[0-8:4,10%2]") == {0, 4, 8, 10}


def _bash(text: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", text], capture_output=True, text=True, timeout=timeout)


def test_forwarded_signal_reaches_the_command_and_its_status_is_the_jobs(tmp_path: Path) -> None:
    payload = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: (print('got USR1', flush=True), sys.exit(7)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    spec = JobSpec(
        command=[sys.executable, "-c", payload], resources=JobResources(signal="USR1@30")
    )
    body = BashLauncher().render(spec)
    # send the signal to the shell (as --signal=B: does) once the command is ready and the
    # shell has its trap in place (SIGUSR1, bit 9, in the caught-signals mask)
    driver = f"""
( {body} ) > out.txt 2> err.txt &
shell=$!
until grep -q ready out.txt 2>/dev/null; do sleep 0.02; done
until [ $(( 0x$(awk '/^SigCgt/ {{print $2}}' /proc/$shell/status) & 0x200 )) -ne 0 ]; do
  sleep 0.02
done
kill -USR1 $shell
wait $shell; echo "status $?"; cat out.txt err.txt
"""
    done = _bash(f"cd {tmp_path} || exit 1\n{driver}")
    assert "status 7" in done.stdout and "got USR1" in done.stdout, done


def test_ray_launcher_script_fails_fast_when_a_node_goes(tmp_path: Path) -> None:
    """The watch loop alone: fake head and workers, a driver that would run for a minute;
    the worker 'node' exits, and the job ends 98 at once instead of waiting for the driver."""
    text = RayLauncher()._driver(JobSpec(command=["sleep", "60"]))
    started = time.monotonic()
    done = _bash(
        "sleep 60 & __ray_head=$!\n"
        "trap 'kill $__ray_head' EXIT\n"  # the launcher's teardown, here
        "sleep 0.5 & __ray_workers=$!\n"  # the worker step ends after half a second
        f"{text}",
        timeout=50,
    )
    assert done.returncode == 98, done
    assert "a Ray worker node" in done.stderr and "stopping the driver" in done.stderr
    assert time.monotonic() - started < 50  # it did not wait for the driver's minute


def test_executor_parameters_take_submitit_names() -> None:
    from pixi_deploy.errors import ConfigError
    from pixi_deploy.slurm import Executor

    executor = Executor(resources=JobResources(cpus_per_task=2))  # connects to nothing yet
    executor.update_parameters(
        timeout_min=60, mem_gb=1.5, tasks_per_node=2, slurm_partition="cpu", nodes=2, name="x"
    )
    r = executor.resources
    assert (r.time, r.mem, r.ntasks_per_node, r.partition, r.nodes, r.cpus_per_task) == (
        "60",
        "1536M",
        2,
        "cpu",
        2,
        2,
    )
    assert executor.name == "x"
    executor.update_parameters(after=["12"], dependency="afterany:3", slurm_array_parallelism=4)
    assert (executor.after, executor.dependency, executor.array_parallelism) == (
        ["12"],
        "afterany:3",
        4,
    )
    with pytest.raises(ConfigError, match="unknown Executor parameter 'walltime'"):
        executor.update_parameters(walltime=5)
