"""Heterogeneous jobs, per-node GPU requests and pre-timeout signals on the real test cluster.

Slurm (22.05 here) did not start a heterogeneous job whose components had to share the one node
of the default test cluster: both stayed PENDING (Resources) on an idle node, their expected
start times a component's time limit apart. The end-to-end test therefore needs a partition
with at least two usable nodes (the multi-node test cluster) and says so when there is none.
"""

from __future__ import annotations

import threading

import pytest

from helpers.cluster import partition_with_nodes
from pixi_deploy.errors import SchedulerError
from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient, SlurmSession
from pixi_deploy.slurm.script import job_script

pytestmark = pytest.mark.cluster


def test_het_job_script_has_one_block_per_component() -> None:
    spec = JobSpec(
        script="true",
        resources=JobResources(cpus_per_task=1, mem="100M"),
        het_components=[JobResources(cpus_per_task=1, mem="200M", gpus_per_node=2)],
    )
    text = job_script(spec, "/base/runs/x")
    first, second = text.split("#SBATCH hetjob\n")
    assert "#SBATCH --mem=100M" in first and "--gres" not in first
    assert "#SBATCH --mem=200M" in second and "#SBATCH --gres=gpu:2" in second


def test_gpus_per_node_and_signal_become_sbatch_options() -> None:
    options = JobResources(gpus=1, gpus_per_node=2, signal="B:USR1@60").options()
    assert "--gpus=1" in options and "--gres=gpu:2" in options and "--signal=B:USR1@60" in options
    assert not any("gres" in o for o in JobResources(gpus_per_node=0).options())


def test_steps_run_in_their_own_het_components(client: SlurmClient) -> None:
    partition = partition_with_nodes(client, 2)
    if partition is None:
        pytest.skip("no partition with two usable nodes: Slurm leaves heterogeneous jobs pending")
    small = JobResources(ntasks=1, cpus_per_task=1, mem="100M", time="00:05:00")
    other = JobResources(ntasks=1, cpus_per_task=1, mem="150M", time="00:05:00")
    small.partition = other.partition = partition
    session = SlurmSession(client, small, components=[other], name="pd-hetjob-test")
    probe = JobSpec(script='echo "node=$SLURMD_NODENAME"')
    with session:
        assert session.job is not None
        results: dict[int, str] = {}

        def run(group: int) -> None:
            result = session.run(probe, het_group=group)
            assert result.ok, result.message()
            results[group] = result.stdout_tail.strip()

        threads = [threading.Thread(target=run, args=(g,)) for g in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        status = session.job.status()
        leader = session.job.id
        assert status.running and sorted(status.tasks) == [f"{leader}+0", f"{leader}+1"]
        placed = client.transport.run(["squeue", "-h", "-j", leader, "-o", "%i|%N"]).stdout
        nodes = dict(line.split("|") for line in placed.split())
        with pytest.raises(SchedulerError, match="het_group 2 is not a component"):
            session.run(probe, het_group=2)
    # each step ran on the node(s) of its own component
    assert results == {0: f"node={nodes[leader + '+0']}", 1: f"node={nodes[leader + '+1']}"}
    assert session.job is None  # released
