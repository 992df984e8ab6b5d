"""Faults on the multi-node test cluster: a node dying under a job, a requeued job followed to
its end with both attempts' logs kept apart, SIGTERM before the time limit reaching the command.

A node "dies" through ``scripts/test-cluster kill-node``: every process in its namespace is
SIGKILLed (slurmd, slurmstepd, the job's tasks) and Slurm marks it DOWN, as a health check
would (slurmctld by itself notices a silent node only after SlurmdTimeout, 300 s). Each test
brings the node back before it ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pixi_deploy.slurm import Job, JobResources, JobSpec, SlurmClient
from pixi_deploy.slurm.jobenv import expand_hostlist

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture
def nodes(multi_node_cluster) -> Iterator:
    """The multi-node cluster; every node is running again after the test."""
    yield multi_node_cluster
    multi_node_cluster.revive()


def running_on(job: Job, timeout: float = 300) -> list[str]:
    """Wait until the job runs; the nodes it runs on."""
    deadline = time.monotonic() + timeout
    while True:
        status = job.status()
        if status.running and status.nodes:
            return expand_hostlist(status.nodes)
        assert not status.final, job.result(status).message()
        assert time.monotonic() < deadline, f"job {job.id} still {status.state}"
        time.sleep(0.2)


def wait_for_line(job: Job, text: str, timeout: float = 300) -> None:
    """Wait until the job's stdout has ``text`` (the payload got going)."""
    deadline = time.monotonic() + timeout
    while text not in job.logs()[0]:
        assert not job.status().final, job.logs()
        assert time.monotonic() < deadline, f"job {job.id} never printed {text!r}"
        time.sleep(0.3)


def test_a_node_dying_under_a_job_is_node_fail_naming_the_node(client: SlurmClient, nodes) -> None:
    spec = JobSpec(
        command=["srun", "sh", "-c", "echo up on $(hostname); exec sleep 600"],
        resources=JobResources(partition=nodes.partition, nodes=2, requeue=False, time="15"),
    )
    job = client.submit(spec)
    batch_host, other = running_on(job)
    wait_for_line(job, f"up on {other}")
    nodes.kill_node(other)
    result = job.wait(timeout=300)
    assert result.state == "NODE_FAIL", result.message()
    assert result.failed_nodes.startswith(other), result
    assert f"its node {other}" in result.message() and "resubmit" in result.message()
    assert batch_host not in result.failed_nodes


REQUEUED = """
echo "attempt ${SLURM_RESTART_COUNT:-0} on $(hostname)"
echo "attempt ${SLURM_RESTART_COUNT:-0} stderr" >&2
if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then exec sleep 600; fi
echo finished
"""


def test_a_requeued_job_is_followed_to_its_end_with_attempts_apart(
    client: SlurmClient, nodes
) -> None:
    spec = JobSpec(
        command=["sh", "-c", REQUEUED],
        resources=JobResources(partition=nodes.partition, requeue=True, time="15"),
    )
    job = client.submit(spec)
    (first_node,) = running_on(job)
    wait_for_line(job, "attempt 0")
    nodes.kill_node(first_node)  # Slurm requeues the job and runs it again elsewhere
    result = job.wait(timeout=600)
    assert result.ok, f"{result.message()}\n{result.stderr_tail}"
    attempts = job.attempts()
    assert len(attempts) == 2, attempts
    (out0, err0), (out1, err1) = attempts
    assert out0.strip() == f"attempt 0 on {first_node}"  # killed before "finished"
    assert "attempt 0 stderr" in err0 and "attempt 1" not in err0
    assert out1.startswith("attempt 1 on ") and out1.strip().endswith("finished")
    # (not asserted: that attempt 1 ran elsewhere. Slurm may run it on the crashed node again
    # once that is back, as when another session's `test-cluster start` resumes it)
    assert err1.strip() == "attempt 1 stderr"
    assert result.stdout_tail.strip().endswith("finished")


CHECKPOINTING = r"""
import signal, sys, time
def checkpoint(signum, frame):
    print(f"got signal {signum}; checkpoint saved at step {step}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, checkpoint)
print("working", flush=True)
step = 0
while True:
    step += 1
    time.sleep(0.1)
"""


def test_sigterm_before_the_time_limit_reaches_the_command(client: SlurmClient, nodes) -> None:
    # a 1-minute limit, SIGTERM 50 s before it: without the signal the job would end TIMEOUT
    spec = JobSpec(
        command=["python3", "-c", CHECKPOINTING],
        resources=JobResources(partition=nodes.partition, time="1", signal="TERM@50"),
    )
    job = client.submit(spec)
    result = job.wait(timeout=300)
    assert result.ok, f"{result.message()}\n{result.stdout_tail}\n{result.stderr_tail}"
    assert "working" in result.stdout_tail
    assert "got signal 15; checkpoint saved at step" in result.stdout_tail
    script = client.transport.read_bytes(f"{job.run_dir}/job.sh").decode()
    assert "#SBATCH --signal=B:TERM@50" in script
