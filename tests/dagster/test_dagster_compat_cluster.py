"""dagster-slurm features on the real test cluster: remote_base with $HOME, payloads already on
the cluster, asset checks in the cluster modes, GPUs per node, one allocation per Dagster run
(also across step processes), heterogeneous jobs, a jump host."""

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from helpers.cluster import partition_with_nodes
from helpers.sshd import extra_sshd
from pixi_deploy.dagster import (
    BashLauncher,
    ComputeResource,
    SlurmAllocationScope,
    SlurmQueueConfig,
    SlurmResource,
    SlurmRunAllocationConfig,
    SlurmRunConfig,
    SlurmSessionResource,
    SSHConnectionResource,
)
from pixi_deploy.slurm import SlurmClient
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.cluster
PAYLOADS = Path(__file__).parent / "payloads"


def _meta(result, node: str) -> dict:
    (mat,) = result.asset_materializations_for_node(node)
    return {k: v.value for k, v in mat.metadata.items()}


def _failure_text(result) -> str:
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failure.step_failure_data.error.to_string()


def _gone(transport, job_id: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        out = transport.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False).stdout.strip()
        if out in ("", "CANCELLED", "COMPLETED", "COMPLETING"):
            return
        assert time.monotonic() < deadline, f"job {job_id} is still {out}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def deployed(test_cluster, pipes_workspace: Path) -> tuple[str, str]:
    """(base, environment path): the pipes environment deployed once for this module."""
    from helpers.cluster import ssh_settings_for
    from pixi_deploy.transport import Transport

    base = f"{test_cluster.base_path}/dagster-c-{uuid.uuid4().hex[:8]}"
    with Transport(ssh_settings_for(test_cluster)) as t:
        path = RemoteStore(t, base).deploy(load_workspace(pipes_workspace)).deployment_path
    return base, path


def test_home_variable_in_remote_base_is_expanded_on_the_cluster(
    test_cluster, pipes_workspace: Path, cluster_transport
) -> None:
    name = f"pd-home-{uuid.uuid4().hex[:8]}"
    c = test_cluster
    slurm = SlurmResource(
        ssh=SSHConnectionResource(
            host=c.host,
            port=c.port,
            user=c.user,
            key_path=str(c.key_path),
            known_hosts_file=str(c.known_hosts),
        ),
        queue=SlurmQueueConfig(time_limit="00:10:00", cpus=1, mem="500M"),
        remote_base=f"$HOME/{name}",  # the dagster-slurm example's spelling
    )

    @dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="where")])
    def where(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context, payload_path=str(PAYLOADS / "report.py"), extras={"n": 1}
        ).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm, manifest_path=str(pipes_workspace))
    try:
        result = dg.materialize([where], resources={"compute": compute})
        assert result.success
        meta = _meta(result, "where")
        assert meta["environment"].startswith(f"/home/{c.user}/{name}/envs/")
        assert meta["cwd"].startswith(f"/home/{c.user}/{name}/runs/")
    finally:
        cluster_transport.run(["rm", "-rf", f"/home/{c.user}/{name}"])


def test_payload_already_on_the_cluster_is_not_uploaded(
    slurm_for, deployed, cluster_transport
) -> None:
    base, env_path = deployed
    scripts = f"{env_path}/scripts"
    cluster_transport.run(["mkdir", "-p", scripts])
    cluster_transport.put_bytes((PAYLOADS / "report.py").read_bytes(), f"{scripts}/cluster_only.py")
    other = f"{base}/payloads/elsewhere.py"
    cluster_transport.put_bytes((PAYLOADS / "jobid.py").read_bytes(), other)

    @dg.asset(
        metadata={"skip_slurm_payload_upload": True},
        check_specs=[dg.AssetCheckSpec("positive", asset="by_default")],
    )
    def by_default(context: dg.AssetExecutionContext, compute: ComputeResource):
        # no local file of that name: only the copy in <env>/scripts/ can run
        return compute.run(
            context=context, payload_path="cluster_only.py", extras={"n": 7}
        ).get_results()

    @dg.asset
    def by_config(
        context: dg.AssetExecutionContext, compute: ComputeResource, config: SlurmRunConfig
    ):
        return compute.run(context=context, payload_path="unused.py", config=config).get_results()

    compute = ComputeResource(
        mode="slurm", slurm=slurm_for(base), pre_deployed_env_path=env_path, cleanup_on_failure=True
    )
    result = dg.materialize(
        [by_default, by_config],
        resources={"compute": compute},
        run_config={
            "ops": {
                "by_config": {"config": {"skip_payload_upload": True, "remote_payload_path": other}}
            }
        },
    )
    assert result.success
    assert _meta(result, "by_default")["rows"] == 7
    assert _meta(result, "by_config")["payload_slurm_job_id"]

    @dg.asset
    def nowhere(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path="x.py",
            skip_payload_upload=True,
            remote_payload_path=f"{base}/payloads/missing.py",
        ).get_results()

    failed = dg.materialize([nowhere], resources={"compute": compute}, raise_on_error=False)
    assert f"the payload {base}/payloads/missing.py is not on the cluster" in _failure_text(failed)


@pytest.mark.parametrize("mode", ["slurm", "slurm-session"])
def test_asset_check_in_cluster_modes(mode: str, slurm_for, deployed) -> None:
    base, env_path = deployed

    @dg.asset(name="numbers")
    def numbers(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context, payload_path=str(PAYLOADS / "jobid.py")
        ).get_materialize_result()

    @dg.asset_check(asset="numbers", name="cluster_check", blocking=True)
    def cluster_check(context: dg.AssetCheckExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(PAYLOADS / "check.py"),
            extras={"n": 2, "asset": "numbers", "check": "cluster_check"},
        ).get_asset_check_result()

    compute = ComputeResource(
        mode=mode,
        slurm=slurm_for(base),
        session=SlurmSessionResource(num_nodes=1, time_limit="00:10:00", release_grace=0),
        pre_deployed_env_path=env_path,
    )
    result = dg.materialize([numbers, cluster_check], resources={"compute": compute})
    assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["cluster_check"] is True


def test_gpus_per_node_asks_slurm_for_gres(slurm_for, deployed) -> None:
    base, env_path = deployed

    @dg.asset
    def gpu(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(PAYLOADS / "jobid.py"),
            extra_slurm_opts={"gpus_per_node": 1},
        ).get_results()

    compute = ComputeResource(mode="slurm", slurm=slurm_for(base), pre_deployed_env_path=env_path)
    result = dg.materialize([gpu], resources={"compute": compute}, raise_on_error=False)
    # the test cluster has no GPUs: sbatch refuses --gres=gpu:1 (a --gpus request reads alike)
    text = _failure_text(result)
    assert "sbatch refused the job" in text and "generic resource" in text.lower()


def test_run_scoped_allocation_serves_every_asset_of_the_run(
    slurm_for, deployed, cluster_transport
) -> None:
    base, env_path = deployed
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_for(base),
        pre_deployed_env_path=env_path,
        allocation_scope=SlurmAllocationScope.RUN,
        run_allocation=SlurmRunAllocationConfig(
            num_nodes=1, cpus_per_task=1, mem="500M", release_grace=0
        ),
    )

    def asset(name: str, **deps) -> dg.AssetsDefinition:
        @dg.asset(name=name, **deps)
        def _a(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(
                context=context, payload_path=str(PAYLOADS / "jobid.py")
            ).get_results()

        return _a

    first = asset("first")
    second = asset("second", deps=[first])
    result = dg.materialize([first, second], resources={"compute": compute})
    assert result.success
    a, b = _meta(result, "first"), _meta(result, "second")
    assert a["payload_slurm_job_id"] == b["payload_slurm_job_id"] == a["slurm_job_id"]
    assert a["slurm_step_id"] != b["slurm_step_id"]
    assert a["pixi_deploy_mode"] == "slurm-run-allocation"
    _gone(cluster_transport, a["payload_slurm_job_id"])

    @dg.asset
    def wants_more(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context, payload_path=str(PAYLOADS / "jobid.py"), extra_slurm_opts={"nodes": 2}
        ).get_results()

    refused = dg.materialize([wants_more], resources={"compute": compute}, raise_on_error=False)
    assert "one allocation shape" in _failure_text(refused)


def test_one_run_allocation_is_shared_by_separate_processes(
    test_cluster, shared_base: str, cluster_transport
) -> None:
    """What Dagster's multiprocess executor does: each step process attaches to the run's
    allocation instead of submitting its own; the last one out releases it."""
    run_id = f"test-{uuid.uuid4().hex[:8]}"
    c = test_cluster
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        from pixi_deploy.dagster.allocation import SharedAllocation
        from pixi_deploy.slurm import JobResources, SlurmClient
        from pixi_deploy.transport import SSHSettings, Transport
        s = SSHSettings(host={c.host!r}, port={c.port}, user={c.user!r},
                        key_path=Path({str(c.key_path)!r}), known_hosts=Path({str(c.known_hosts)!r}),
                        ssh_config=None)
        with Transport(s) as t:
            shared = SharedAllocation(SlurmClient(t, {shared_base!r}),
                                      JobResources(cpus_per_task=1, mem="200M", time="00:05:00"),
                                      run_id={run_id!r}, name="pd-shared-test", max_concurrent_steps=2)
            session = shared.acquire()
            print(json.dumps({{"job": session.job.id, "attached": shared.attached}}), flush=True)
            sys.stdin.readline()  # hold the lease until told to go
            shared.release(grace=float(sys.argv[1]))
        """
    )
    env = {**os.environ}

    def start(grace: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", script, grace],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    one = start("30")
    first = json.loads(one.stdout.readline())  # type: ignore[union-attr]
    two = start("0")
    second = json.loads(two.stdout.readline())  # type: ignore[union-attr]
    assert second["job"] == first["job"] and second["attached"] and not first["attached"]
    one.communicate("go\n", timeout=120)  # leaves with a grace: the other still holds a lease
    state = cluster_transport.run(["squeue", "-h", "-j", first["job"], "-o", "%T"]).stdout
    assert state.strip() == "RUNNING"
    two.communicate("go\n", timeout=120)  # the last one out, no grace: cancelled now
    _gone(cluster_transport, first["job"], timeout=30)
    folder = f"{shared_base}/dagster/allocations/{run_id}"
    deadline = time.monotonic() + 30
    while cluster_transport.exists(folder):
        assert time.monotonic() < deadline
        time.sleep(0.2)


def test_run_hetjob_runs_each_payload_in_its_component(
    slurm_for, deployed, cluster_transport
) -> None:
    base, env_path = deployed
    client = SlurmClient(cluster_transport, base)
    partition = partition_with_nodes(client, 2)
    names = ["prep", "train"] if partition else ["prep"]
    specs = [dg.AssetSpec(n) for n in names]

    @dg.multi_asset(specs=specs)
    def pipeline(context: dg.AssetExecutionContext, compute: ComputeResource):
        cpus = {"prep": 1, "train": 2}
        runs = compute.run_hetjob(
            context,
            assets=[
                (
                    name,
                    str(PAYLOADS / "component.py"),
                    {"cpus_per_task": cpus[name], "mem": "300M", "time_limit": "00:05:00"}
                    | ({"partition": partition} if partition else {}),
                )
                for name in names
            ],
            launchers={"prep": BashLauncher()},
        )
        for name in names:
            yield from runs[name].get_results()

    compute = ComputeResource(
        mode="slurm-hetjob", slurm=slurm_for(base), pre_deployed_env_path=env_path
    )
    result = dg.materialize([pipeline], resources={"compute": compute})
    assert result.success
    metas = {m.asset_key.path[-1]: {k: v.value for k, v in m.metadata.items()}
             for m in result.asset_materializations_for_node("pipeline")}  # fmt: skip
    assert set(metas) == set(names)
    jobs = {m["payload_slurm_job_id"] for m in metas.values()}
    assert len(jobs) == 1 and metas["prep"]["cpus"] == "1"  # one (heterogeneous) job
    if partition:  # two components, each on its own node with its own size
        assert metas["train"]["cpus"] == "2"
        assert metas["prep"]["node"] != metas["train"]["node"]
    _gone(cluster_transport, jobs.pop())


def test_login_through_a_jump_host_resource(test_cluster, deployed, tmp_path: Path) -> None:
    base, env_path = deployed
    c = test_cluster
    with extra_sshd(c, tmp_path / "jump", forwarding=True) as jump:
        hop = SSHConnectionResource(
            host=jump.host,
            port=jump.port,
            user=c.user,
            key_path=str(c.key_path),
            known_hosts_file=str(jump.known_hosts),
        )
        slurm = SlurmResource(
            ssh=SSHConnectionResource(
                host=c.host,
                port=c.port,
                user=c.user,
                key_path=str(c.key_path),
                known_hosts_file=str(c.known_hosts),
                jump_host=hop,
            ),
            queue=SlurmQueueConfig(time_limit="00:10:00", cpus=1, mem="500M"),
            remote_base=base,
        )

        @dg.asset
        def hopped(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(
                context=context, payload_path=str(PAYLOADS / "jobid.py")
            ).get_results()

        compute = ComputeResource(mode="slurm", slurm=slurm, pre_deployed_env_path=env_path)
        result = dg.materialize([hopped], resources={"compute": compute})
        assert result.success and _meta(result, "hopped")["payload_slurm_job_id"]
        assert "Accepted publickey" in jump.log.read_text()
    slurm.transport().close()
