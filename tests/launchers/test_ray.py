"""RayLauncher for real: Ray from PyPI in a deployed environment, on the test cluster's node."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from pixi_deploy.launchers import BashLauncher, RayLauncher
from pixi_deploy.slurm import JobResources, JobResult, JobSpec, SlurmClient
from pixi_deploy.transport import SSHSettings, Transport

DRIVER = b"""
import os
import ray
ray.init()

@ray.remote
def square(x):
    return x * x

print("RESULT", sum(ray.get([square.remote(i) for i in range(10)])))
print("NODES", len([n for n in ray.nodes() if n["Alive"]]))
print("ADDRESS", os.environ["RAY_ADDRESS"])
"""


def test_render_uses_per_job_ports_and_local_dashboard() -> None:
    text = RayLauncher().render(JobSpec(command=["python", "driver.py"]))
    for option in (
        "--port=",
        "--node-manager-port=",
        "--object-manager-port=",
        "--min-worker-port=",
        "--max-worker-port=",
        "--dashboard-port=",
        "--dashboard-agent-listen-port=",
        "--dashboard-agent-grpc-port=",
        "--metrics-export-port=",
        "--runtime-env-agent-port=",
        "--temp-dir=",
    ):
        assert option in text
    assert "--dashboard-host=127.0.0.1" in text and "--include-dashboard=false" in text
    assert "ray stop" not in text  # would stop other jobs' Ray on the node
    assert "( exec python driver.py ) &" in text  # the driver, watched in the background
    assert BashLauncher().render(JobSpec(command=["echo", "a b"])) == "echo 'a b'\n"


def _spec(env: str) -> JobSpec:
    return JobSpec(
        command=["python", "driver.py"],
        environment_path=env,
        files={"driver.py": DRIVER},
        launcher=RayLauncher(wait_timeout=120),
        resources=JobResources(cpus_per_task=1, mem="2G", time="10"),
        name="ray-test",
    )


def _check(result: JobResult) -> None:
    assert result.ok, f"{result.message()}\n{result.stderr_tail[-3000:]}"
    assert "RESULT 285" in result.stdout_tail and "NODES 1" in result.stdout_tail


def test_ray_driver_runs_in_a_job(ray_env: tuple[SSHSettings, str]) -> None:
    settings, env = ray_env
    with Transport(settings) as transport:
        client = SlurmClient(transport, env.rsplit("/envs/", 1)[0])
        result = client.submit(_spec(env)).wait(timeout=300)
        _check(result)
        # torn down: no Ray process of ours is left on the node, the port claim is gone
        left = transport.run_script(
            'pgrep -u "$(id -u)" -x raylet; pgrep -u "$(id -u)" -x gcs_server; true'
        ).stdout
        assert left.strip() == ""


def test_two_ray_jobs_on_one_node_do_not_collide(ray_env: tuple[SSHSettings, str]) -> None:
    settings, env = ray_env
    with Transport(settings) as transport:
        client = SlurmClient(transport, env.rsplit("/envs/", 1)[0])
        jobs = [client.submit(_spec(env)) for _ in range(2)]
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda j: j.wait(timeout=300), jobs))
        for result in results:
            _check(result)
        addresses = {
            line.split()[1]
            for r in results
            for line in r.stdout_tail.splitlines()
            if line.startswith("ADDRESS ")
        }
        assert len(addresses) == 2, addresses  # two different GCS ports
