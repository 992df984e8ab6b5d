"""Modes `slurm` and `slurm-session` with real Dagster against the sshd + Slurm test cluster:
deploy on demand and reuse, Pipes results from the remote payload, remote tracebacks,
pre-deployed environments, one allocation shared by a run's assets, cancellation."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import dagster as dg
import pytest

from pixi_deploy.dagster import BashLauncher, ComputeResource, SessionResource
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.cluster
PAYLOADS = Path(__file__).parent / "payloads"


def _asset(name: str, payload: str, **run_kwargs) -> dg.AssetsDefinition:
    checks = [dg.AssetCheckSpec("positive", asset=name)] if payload == "report.py" else []

    @dg.asset(name=name, check_specs=checks)
    def _run(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context, payload_path=str(PAYLOADS / payload), **run_kwargs
        ).get_materialize_result()

    return _run


def _failure_text(result) -> str:
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failure.step_failure_data.error.to_string()


def _job_gone(transport, job_id: str) -> bool:
    out = transport.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False).stdout.strip()
    return out in ("", "CANCELLED", "COMPLETED", "COMPLETING")


def test_slurm_mode_deploys_on_demand_then_reuses(
    slurm_for, fresh_base: str, pipes_workspace: Path
) -> None:
    slurm = slurm_for(fresh_base)
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm,
        default_launcher=BashLauncher(),
        auto_detect_platform=True,
        manifest_path=str(pipes_workspace),
    )
    numbers = _asset("numbers", "report.py", extras={"n": 42}, extra_env={"GREETING": "hi"})
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([numbers], resources={"compute": compute}, instance=instance)
    assert first.success
    (mat,) = first.asset_materializations_for_node("numbers")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["rows"] == 42 and meta["greeting"] == "hi"
    assert meta["payload_slurm_job_id"] and meta["payload_slurm_job_id"] == meta["slurm_job_id"]
    assert meta["environment"].startswith(f"{fresh_base}/envs/")  # ran in the deployment
    assert meta["pixi_deploy_environment"] == meta["environment"]
    assert meta["pixi_deploy_deployed"] == "deployed"
    assert meta["pixi_deploy_platform"] == "linux-64"  # detected from the edge node
    # the payload (from outside the workspace) runs in its folder of the run's code snapshot
    assert meta["cwd"].startswith(f"{fresh_base}/runs/")
    assert meta["cwd"].endswith("/work/.pixi-deploy-payload")
    (check,) = first.get_asset_check_evaluations()
    assert check.passed
    logs = [e.user_message for e in instance.all_logs(first.run_id)]
    assert any("hello from the payload" in m for m in logs)
    assert any(f"submitted Slurm job {meta['slurm_job_id']}" in m for m in logs)

    second = dg.materialize([numbers], resources={"compute": compute})
    (mat2,) = second.asset_materializations_for_node("numbers")
    assert mat2.metadata["pixi_deploy_deployed"].value == "reused"
    assert mat2.metadata["environment"].value == meta["environment"]
    assert mat2.metadata["slurm_job_id"].value != meta["slurm_job_id"]  # one job per run
    # the run folders are cleaned up (debug_mode is off)
    leftovers = compute.slurm.transport().run(
        ["sh", "-c", 'find "$1"/dagster -mindepth 1 2>/dev/null | wc -l', "sh", fresh_base]
    )
    assert leftovers.stdout.strip() == "0"


def test_remote_payload_exception_fails_with_remote_traceback(
    slurm_for, shared_base: str, pipes_workspace: Path, cluster_transport, tmp_path: Path
) -> None:
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_for(shared_base),
        manifest_path=str(pipes_workspace),
        debug_mode=True,
        debug_dir=str(tmp_path / "debug"),
    )
    result = dg.materialize(
        [_asset("boom", "explode.py")], resources={"compute": compute}, raise_on_error=False
    )
    assert not result.success
    text = _failure_text(result)
    assert "failed on the cluster" in text
    assert "explode_here" in text and "x / 0" in text and "ZeroDivisionError" in text
    # the traceback names the payload's file on the cluster, in the job's copy of the snapshot
    remote_payload = re.search(
        rf"{re.escape(shared_base)}/runs/\S+/work/.pixi-deploy-payload/explode\.py", text
    )
    assert remote_payload is not None
    assert cluster_transport.exists(remote_payload.group(0))
    # debug_mode keeps the run folder (context, messages) and the submission details
    (job_json,) = (tmp_path / "debug").rglob("job.json")
    details = json.loads(job_json.read_text())
    folder = details["remote_folder"]
    assert folder.startswith(f"{shared_base}/dagster/")
    for name in ("context.json", "messages.jsonl"):
        assert cluster_transport.exists(f"{folder}/{name}")
    assert "DAGSTER_PIPES_CONTEXT" in details["env_names"]
    assert details["metadata"]["pixi_deploy_code_snapshot"]
    assert (job_json.parent / "launcher.sh").read_text() == "python -u explode.py\n"


def test_missing_pre_deployed_env_fails_before_submitting(
    slurm_for, fresh_base: str, cluster_transport
) -> None:
    missing = f"{fresh_base}/envs/0123456789abcdef"
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_for(fresh_base),
        pre_deployed_env_path=missing,
    )
    result = dg.materialize(
        [_asset("numbers", "report.py", extras={"n": 1})],
        resources={"compute": compute},
        raise_on_error=False,
    )
    text = _failure_text(result)
    assert f"pre_deployed_env_path {missing} is not a deployed environment" in text
    assert "pixi-deploy deploy --target ssh" in text
    # nothing was submitted or uploaded
    assert not cluster_transport.exists(f"{fresh_base}/runs")
    assert not cluster_transport.exists(f"{fresh_base}/dagster")


def _deployed(cluster_transport, base: str, workspace: Path) -> str:
    store = RemoteStore(cluster_transport, base)
    return store.deploy(load_workspace(workspace)).deployment_path


def test_session_assets_share_one_allocation_on_a_pre_deployed_env(
    slurm_for, shared_base: str, pipes_workspace: Path, cluster_transport
) -> None:
    deployment_path = _deployed(cluster_transport, shared_base, pipes_workspace)
    slurm_resource = slurm_for(shared_base)
    session_resource = SessionResource(enabled=True, num_nodes=1, time_limit="00:10:00")
    compute = ComputeResource(
        mode="slurm-session",
        slurm=slurm_resource,
        session=session_resource,
        default_launcher=BashLauncher(),
        pre_deployed_env_path=deployment_path,
    )
    first = _asset("first", "jobid.py")

    @dg.asset(deps=[first])
    def second(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run_session(
            context=context, payload_path=str(PAYLOADS / "jobid.py")
        ).get_materialize_result()

    result = dg.materialize([first, second], resources={"compute": compute})
    assert result.success
    ids = {
        node: result.asset_materializations_for_node(node)[0].metadata
        for node in ("first", "second")
    }
    job_first = ids["first"]["payload_slurm_job_id"].value
    assert job_first and ids["second"]["payload_slurm_job_id"].value == job_first  # one allocation
    assert ids["first"]["slurm_job_id"].value == job_first  # the holder job, as Dagster sees it
    assert ids["first"]["slurm_step"].value != ids["second"]["slurm_step"].value
    assert ids["first"]["pixi_deploy_deployed"].value == "pre-deployed"
    assert ids["first"]["pixi_deploy_mode"].value == "slurm-session"
    _wait_gone(cluster_transport, job_first)  # released at teardown


def test_session_is_released_when_an_asset_fails(
    slurm_for, shared_base: str, pipes_workspace: Path, cluster_transport
) -> None:
    compute = ComputeResource(
        mode="slurm-session",
        slurm=slurm_for(shared_base),
        session=SessionResource(num_nodes=1, time_limit="00:10:00"),
        manifest_path=str(pipes_workspace),
    )
    ok = _asset("ok", "jobid.py")

    @dg.asset(deps=[ok])
    def boom(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context, payload_path=str(PAYLOADS / "explode.py")
        ).get_materialize_result()

    result = dg.materialize([ok, boom], resources={"compute": compute}, raise_on_error=False)
    assert not result.success
    assert "explode_here" in _failure_text(result)
    holder = result.asset_materializations_for_node("ok")[0].metadata["payload_slurm_job_id"].value
    _wait_gone(cluster_transport, holder)


def _wait_gone(transport, job_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _job_gone(transport, job_id):
        assert time.monotonic() < deadline, f"job {job_id} still there"
        time.sleep(0.5)


@pytest.mark.parametrize("mode", ["slurm", "slurm-session"])
def test_interrupted_run_cancels_the_slurm_job(
    mode: str,
    test_cluster,
    shared_base: str,
    pipes_workspace: Path,
    cluster_transport,
    tmp_path: Path,
) -> None:
    """SIGINT is what `dagster` sends a run it terminates: the job (or the session's
    allocation, whose id the step sees as SLURM_JOB_ID) must be gone afterwards."""
    marker = f"{shared_base}/markers/{uuid.uuid4().hex[:8]}"
    cluster_transport.run(["mkdir", "-p", marker.rsplit("/", 1)[0]])
    c = test_cluster
    settings = dict(
        host=c.host, port=c.port, user=c.user, key=str(c.key_path), known=str(c.known_hosts)
    )
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import dagster as dg
        from pixi_deploy.dagster import (
            ComputeResource, SessionResource, SlurmQueueConfig, SlurmResource,
            SSHConnectionResource,
        )

        s = json.loads({json.dumps(json.dumps(settings))})
        slurm = SlurmResource(
            ssh=SSHConnectionResource(host=s["host"], port=s["port"], user=s["user"],
                                      key_path=s["key"], known_hosts=s["known"]),
            queue=SlurmQueueConfig(cpus=1, mem="500M"),
            remote_base={shared_base!r},
        )
        compute = ComputeResource(
            mode={mode!r}, slurm=slurm, session=SessionResource(num_nodes=1, time_limit="00:10:00"),
            manifest_path={str(pipes_workspace)!r},
        )

        @dg.asset
        def slow(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(
                context=context,
                payload_path={str(PAYLOADS / "sleeper.py")!r},
                extras={{"marker": {marker!r}, "seconds": 600}},
            ).get_materialize_result()

        dg.materialize([slow], resources={{"compute": compute}})
        """
    )
    log = tmp_path / "run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT, env=os.environ
        )
    try:
        deadline = time.monotonic() + 240
        job_id = ""
        while not job_id:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
            job_id = cluster_transport.run(["cat", marker], check=False).stdout.strip()
        state = cluster_transport.run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip()
        assert state == "RUNNING"
        proc.send_signal(signal.SIGINT)  # what `dagster` does to a run it terminates
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_gone(cluster_transport, job_id, timeout=30)
    words = "cancelling Slurm job" if mode == "slurm" else "releasing the session allocation"
    assert f"{words} {job_id}" in log.read_text()
