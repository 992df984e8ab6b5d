"""Multi-node work on the namespaced nodes (partition ``multi``): a plain job of 2 nodes x 2
tasks with srun inside, and a SlurmSession holding 2 nodes."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient, SlurmSession
from pixi_deploy.slurm.jobenv import expand_hostlist
from pixi_deploy.transport import Transport

pytestmark = pytest.mark.cluster


def test_two_nodes_two_tasks_each_with_srun_find_the_environment(
    client: SlurmClient, demo_env: str, multi_node_cluster
) -> None:
    spec = JobSpec(
        command=["srun", "sh", "-c", 'echo "$SLURM_PROCID $(hostname) $(greet | head -n 1)"'],
        environment_path=demo_env,
        resources=JobResources(
            partition=multi_node_cluster.partition, nodes=2, ntasks_per_node=2, time="5"
        ),
    )
    result = client.submit(spec).wait(timeout=300)
    assert result.ok, f"{result.message()}\n{result.stderr_tail}"
    rows = sorted(line.split(" ", 2) for line in result.stdout_tail.splitlines())
    assert [r[0] for r in rows] == ["0", "1", "2", "3"]
    hosts = [r[1] for r in rows]
    assert len(set(hosts)) == 2 and set(hosts) <= set(multi_node_cluster.nodes)
    assert all(hosts.count(h) == 2 for h in hosts)  # two tasks per node
    # every task ran greet from the deployed environment, on its own node
    assert {r[2] for r in rows} == {f"hello from greet 1.0.0 at {demo_env}"}
    assert set(expand_hostlist(result.nodes)) == set(hosts)  # the result says where it ran


# Each step takes the next arrival number, then waits (up to a deadline) until its partner,
# the other step of its pair, has arrived too: with max_concurrent_steps=2 pairs form, so two
# steps really ran at once; at that moment it records how many steps are inside.
PAIR = r"""
d=$1; k=1
until mkdir "$d/arrived-$k" 2>/dev/null; do k=$((k + 1)); done
touch "$d/inside-$k"
mate=$(( k % 2 == 1 ? k + 1 : k - 1 ))
i=0
until [ -d "$d/arrived-$mate" ] || [ $i -ge 1200 ]; do sleep 0.1; i=$((i + 1)); done
echo "step $k on $(hostname) with $(ls "$d" | grep -c '^inside-') inside, mate $([ -d "$d/arrived-$mate" ] && echo came || echo missing)"
rm -f "$d/inside-$k"
"""


def test_session_on_two_nodes_places_steps_and_honours_the_step_limit(
    client: SlurmClient, transport: Transport, base: str, multi_node_cluster
) -> None:
    first, second = multi_node_cluster.nodes[:2]
    resources = JobResources(
        partition=multi_node_cluster.partition, nodes=2, ntasks_per_node=2, time="10"
    )
    with SlurmSession(client, resources, max_concurrent_steps=2) as session:
        assert session.job is not None
        for node in (first, second):  # a step placed on a chosen node
            placed = session.run(
                JobSpec(command=["hostname"], resources=JobResources(nodelist=node))
            )
            assert placed.ok and placed.stdout_tail.strip() == node, placed.stderr_tail
        spanning = session.run(
            JobSpec(command=["hostname"], resources=JobResources(nodes=2, ntasks=2))
        )
        assert spanning.ok, spanning.stderr_tail
        assert sorted(spanning.stdout_tail.split()) == sorted([first, second])

        folder = f"{base}/pairs-{uuid.uuid4().hex[:6]}"
        transport.run(["mkdir", "-p", folder])
        started = threading.Barrier(4)

        def step(_: int) -> str:
            started.wait(60)  # four steps asked for at once
            result = session.run(JobSpec(command=["bash", "-c", PAIR, "pair", folder]))
            assert result.ok, result.stderr_tail
            return result.stdout_tail.strip()

        with ThreadPoolExecutor(4) as pool:
            lines = list(pool.map(step, range(4)))
    assert session.peak_concurrent_steps == 2
    for line in lines:  # both of each pair ran at once, never more than the limit inside
        words = line.split()
        assert words[-1] == "came", lines
        assert words[5] in ("1", "2"), lines
    assert sorted(int(line.split()[1]) for line in lines) == [1, 2, 3, 4]
