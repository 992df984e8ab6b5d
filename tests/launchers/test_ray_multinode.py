"""RayLauncher across the namespaced nodes of the test cluster (partition ``multi``): the
driver sees every node, tasks run on each, teardown leaves nothing, two jobs on the same nodes
do not collide, and a Ray worker node killed mid-run fails the job instead of hanging it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor

import pytest

from pixi_deploy.launchers import RayLauncher
from pixi_deploy.slurm import JobResources, JobResult, JobSpec, SlurmClient
from pixi_deploy.transport import SSHSettings, Transport

pytestmark = [pytest.mark.cluster, pytest.mark.slow]  # ~10-15 s each: Ray on 2-3 nodes

DRIVER = b"""
import os, socket, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()

@ray.remote(num_cpus=1)
def where():
    return socket.gethostname()

alive = [n for n in ray.nodes() if n["Alive"]]
hosts = ray.get([
    where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
    for n in alive
])
print("CPUS", int(ray.cluster_resources()["CPU"]))
print("HOSTS", ",".join(sorted(hosts)))
print("ADDRESS", os.environ["RAY_ADDRESS"])
"""


def spec(env: str, nodes: int, partition: str, nodelist: str | None = None) -> JobSpec:
    return JobSpec(
        command=["python", "driver.py"],
        environment_path=env,
        files={"driver.py": DRIVER},
        launcher=RayLauncher(wait_timeout=180),
        resources=JobResources(
            partition=partition,
            nodes=nodes,
            ntasks_per_node=1,
            cpus_per_task=1,
            mem="1500M",
            time="10",
            nodelist=nodelist,
        ),
        name="ray-multinode",
    )


def lines(result: JobResult, key: str) -> list[str]:
    return [ln.split(" ", 1)[1] for ln in result.stdout_tail.splitlines() if ln.startswith(key)]


RAY_PROCESS = r"raylet|gcs_server|ray::|default_worker|ray/_private|ray start|ray/dashboard"


@pytest.mark.parametrize("nodes", [2, 3])
def test_ray_spans_nodes_and_tears_down(
    ray_env: tuple[SSHSettings, str], multi_node_cluster, nodes: int
) -> None:
    settings, env = ray_env
    with Transport(settings) as transport:
        client = SlurmClient(transport, env.rsplit("/envs/", 1)[0])
        result = client.submit(spec(env, nodes, multi_node_cluster.partition)).wait(timeout=600)
        assert result.ok, f"{result.message()}\n{result.stderr_tail[-4000:]}"
        assert lines(result, "CPUS") == [str(nodes)]  # one CPU per node, every node counted
        hosts = lines(result, "HOSTS")[0].split(",")
        assert len(set(hosts)) == nodes and set(hosts) <= set(multi_node_cluster.nodes)
        assert multi_node_cluster.processes(RAY_PROCESS) == []


def test_two_ray_jobs_on_the_same_nodes_do_not_collide(
    ray_env: tuple[SSHSettings, str], multi_node_cluster
) -> None:
    settings, env = ray_env
    first, second = multi_node_cluster.nodes[:2]
    with Transport(settings) as transport:
        client = SlurmClient(transport, env.rsplit("/envs/", 1)[0])
        # both jobs on the same two nodes (each node has 2 CPUs, each job takes 1 per node)
        specs = [spec(env, 2, multi_node_cluster.partition, f"{first},{second}") for _ in (1, 2)]
        jobs = [client.submit(s) for s in specs]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda j: j.wait(timeout=600), jobs))
        for result in results:
            assert result.ok, f"{result.message()}\n{result.stderr_tail[-4000:]}"
            assert lines(result, "HOSTS") == [f"{first},{second}"]
        addresses = {lines(r, "ADDRESS")[0] for r in results}
        assert len(addresses) == 2, addresses  # two heads, two GCS ports on the same node
        assert multi_node_cluster.processes(RAY_PROCESS) == []


# An actor on every node; after READY the driver keeps calling them, so losing a node's Ray
# raises in the driver (or the launcher sees the node's `ray start` end first).
ACTORS = b"""
import socket, sys, time, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
ray.init()

@ray.remote(num_cpus=0, max_restarts=0)
class Where:
    def host(self):
        return socket.gethostname()

actors = [
    Where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
    for n in ray.nodes() if n["Alive"]
]
print("READY", ",".join(sorted(ray.get([a.host.remote() for a in actors]))), flush=True)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    ray.get([a.host.remote() for a in actors])
    time.sleep(0.2)
print("the worker node was never lost", flush=True)
"""


def test_a_ray_worker_node_killed_mid_run_fails_the_job(
    ray_env: tuple[SSHSettings, str], multi_node_cluster
) -> None:
    settings, env = ray_env
    victim = {}
    job_spec = spec(env, 2, multi_node_cluster.partition)
    job_spec.files = {"driver.py": ACTORS}

    def on_stdout(line: str) -> None:
        if line.startswith("READY ") and not victim:
            hosts = line.split()[1].split(",")
            victim["node"] = hosts[-1]  # not the batch host (node of the head) ...
            head_first = hosts[0]
            assert head_first != victim["node"]
            # ... kill that node's Ray: raylet, its workers, its `ray start --block`
            for entry in multi_node_cluster.processes(RAY_PROCESS):
                node, pid = entry.split(":")[0], int(entry.split()[1])
                if node == victim["node"]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)

    with Transport(settings) as transport:
        client = SlurmClient(transport, env.rsplit("/envs/", 1)[0])
        result = client.submit(job_spec).wait(timeout=600, on_stdout=on_stdout)
    assert victim, f"the driver never got ready: {result.message()}\n{result.stderr_tail[-3000:]}"
    # the failure reaches the user as a failed job, not a hang (a hang would be TIMEOUT)
    assert result.state == "FAILED", f"{result.message()}\n{result.stderr_tail[-3000:]}"
    assert "the worker node was never lost" not in result.stdout_tail
    # whichever notices first: the launcher (the node's `ray start` ended) or the driver
    # (Ray raises on the lost actor); the watch alone is tested in test_multinode_units.py
    lost = r"stopped while the driver ran|Actor(Died|Unavailable)Error|RayActorError"
    assert re.search(lost, result.stderr_tail), result.stderr_tail[-3000:]
    assert multi_node_cluster.processes(RAY_PROCESS) == []
