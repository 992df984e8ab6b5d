"""Executor for real: Python functions as Slurm jobs on the multi-node test cluster, shipped
with cloudpickle into an environment deployed on demand, results back over SSH."""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from helpers.cluster import ssh_settings_for
from pixi_deploy.errors import ConfigError
from pixi_deploy.slurm import (
    Executor,
    JobEnvironment,
    JobResources,
    UncompletedJobError,
)
from pixi_deploy.slurm.function_job import RemoteTraceback
from pixi_deploy.transport import Transport

from .executor_workspace import make_executor_workspace

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def functions_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_executor_workspace(tmp_path_factory.mktemp("functions"))


@pytest.fixture(scope="module")
def executor_transport(test_cluster):
    base = f"{test_cluster.base_path}/executor-{uuid.uuid4().hex[:8]}"
    settings = ssh_settings_for(test_cluster).with_changes(base_path=base)
    with Transport(settings) as transport:
        yield transport


@pytest.fixture
def executor(functions_ws, executor_transport, multi_node_cluster, tmp_path_factory) -> Executor:
    return Executor(
        manifest_path=functions_ws / "pixi.toml",
        resources=JobResources(partition=multi_node_cluster.partition, time="10", mem="300M"),
        transport=executor_transport,
        cache_dir=tmp_path_factory.getbasetemp() / "executor-cache",
    )


def add(a: int, b: int, *, times: int = 1) -> dict[str, object]:
    return {"sum": (a + b) * times, "host": socket.gethostname()}


class Boom(ValueError):
    pass


def explode(text: str) -> None:
    def deeper() -> None:
        raise Boom(f"remote failure: {text}")

    deeper()


def square(x: int) -> int:
    return x * x


def ranks() -> dict[str, object]:
    env = JobEnvironment()
    return {
        "global": env.global_rank,
        "local": env.local_rank,
        "tasks": env.num_tasks,
        "node": env.node,
        "hostnames": env.hostnames,
        "host": socket.gethostname(),
    }


def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "woke up"


def test_a_function_returns_its_value(executor: Executor, multi_node_cluster) -> None:
    job = executor.submit(add, 2, 3, times=10)
    value = job.result(timeout=300)
    assert value["sum"] == 50
    assert value["host"] in multi_node_cluster.nodes  # it ran on a compute node
    assert job.done()
    # a lambda and a closure travel too (cloudpickle, by value)
    offset = 7
    assert executor.submit(lambda x: x + offset, 1).result(timeout=300) == 8


def test_a_raising_function_reraises_with_the_remote_traceback(executor: Executor) -> None:
    job = executor.submit(explode, "disk full")
    with pytest.raises(Boom, match="remote failure: disk full") as info:
        job.result(timeout=300)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in deeper" in cause.text and "in explode" in cause.text  # the remote frames
    assert any(job.id in note for note in info.value.__notes__)
    assert job.wait().state == "FAILED"
    assert "Boom: remote failure: disk full" in job.stderr()


@pytest.mark.slow  # 100 array tasks: ~15 s
def test_map_array_of_100_elements_is_one_job_array(executor: Executor) -> None:
    jobs = executor.map_array(square, range(100))
    assert len(jobs) == 100
    array_id = jobs[0].job.id
    assert [j.id for j in jobs] == [f"{array_id}_{i}" for i in range(100)]
    assert [j.result(timeout=900) for j in jobs] == [i * i for i in range(100)]
    client = jobs[0].job.client
    # all tasks followed through the one array job: far fewer squeue calls than tasks
    assert client.squeue_calls < 100


def test_two_nodes_four_tasks_get_their_ranks(executor: Executor, multi_node_cluster) -> None:
    executor.update_parameters(nodes=2, ntasks_per_node=2, cpus_per_task=1)
    job = executor.submit(ranks)
    results = job.results(timeout=300)
    assert [r["global"] for r in results] == [0, 1, 2, 3]
    assert sorted(r["local"] for r in results) == [0, 0, 1, 1]
    assert {r["tasks"] for r in results} == {4}
    hostnames = results[0]["hostnames"]
    assert len(hostnames) == 2 and set(hostnames) <= set(multi_node_cluster.nodes)
    for r in results:  # each task ran on the node its rank says
        assert r["host"] == hostnames[r["node"]]
        assert r["hostnames"] == hostnames
    assert job.result(timeout=10) == results[0]  # rank 0's, as submitit


def write_marker(path: str) -> str:
    with open(path, "w") as out:
        out.write("first was here")
    return "written"


def read_marker(path: str) -> str:
    with open(path) as marker:  # fails unless the first job ran before
        return marker.read()


def test_after_runs_functions_in_order(executor: Executor, executor_transport) -> None:
    path = f"{executor_transport.base_path}/marker-{uuid.uuid4().hex[:6]}"
    first = executor.submit(write_marker, path)
    executor.update_parameters(after=[first])
    second = executor.submit(read_marker, path)
    assert second.result(timeout=300) == "first was here"
    assert first.result(timeout=10) == "written"


def test_cancel(executor: Executor) -> None:
    job = executor.submit(sleeper, 600)
    deadline = time.monotonic() + 300
    while not job.status().running:  # wait for it to really run, then cancel it
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.2)
    assert not job.done()
    job.cancel()
    with pytest.raises(UncompletedJobError) as info:
        job.result(timeout=300)
    assert info.value.result.state == "CANCELLED"
    assert "cancelled" in str(info.value)
    assert job.done()


def test_an_environment_without_cloudpickle_is_refused_clearly(
    executor_transport, multi_node_cluster, tmp_path: Path
) -> None:
    workspace = make_executor_workspace(tmp_path, with_cloudpickle=False)
    executor = Executor(
        manifest_path=workspace / "pixi.toml",
        resources=JobResources(partition=multi_node_cluster.partition),
        transport=executor_transport,
        cache_dir=tmp_path / "cache",
    )
    runs = f"{executor_transport.base_path}/runs"
    before = executor_transport.run_script(f"ls {runs} 2>/dev/null | wc -l").stdout
    with pytest.raises(ConfigError, match="has no cloudpickle") as info:
        executor.submit(square, 3)
    assert info.value.exit_code == 7
    assert "pixi add cloudpickle" in str(info.value)
    after = executor_transport.run_script(f"ls {runs} 2>/dev/null | wc -l").stdout
    assert before == after  # nothing was submitted
