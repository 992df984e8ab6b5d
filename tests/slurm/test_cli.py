"""pixi-deploy submit/status/logs/cancel against the real cluster, in-process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pixi_deploy.slurm import SlurmClient
from pixi_deploy.store.metadata import DeploymentMetadata

pytestmark = pytest.mark.cluster


def test_submit_follow_status_logs_cancel(
    ssh_env,
    base: str,
    demo_env: str,
    tmp_path: Path,
    cli,
    monkeypatch,
) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    deployment = tmp_path / "deployment_metadata.json"
    deployment.write_text(json.dumps({**_metadata(demo_env)}))
    done = cli(
        "submit",
        "--deployment",
        deployment,
        "--mem",
        "100M",
        "--sbatch",
        "--exclusive",
        "--",
        "sh",
        "-c",
        "greet; echo err >&2",
    )
    assert done.exit_code == 0, done.stderr
    assert done.stdout.startswith("hello from greet") and "err" in done.stderr
    failed = cli("submit", "--deployment", deployment, "--json", "--", "sh", "-c", "exit 7")
    assert failed.exit_code == 8
    data = json.loads(failed.stdout)
    assert (data["state"], data["exit_code"]) == ("FAILED", 7)
    assert f"job {data['job_id']} failed with exit code 7" in failed.stderr
    started = cli(
        "submit", "--deployment", deployment, "--no-follow", "--json", "--", "sleep", "60"
    )
    job_id = json.loads(started.stdout)["job_id"]
    listed = cli("status", job_id, data["job_id"], "--json")
    states = {row["job_id"]: row for row in json.loads(listed.stdout)}
    assert states[job_id]["state"] in ("PENDING", "RUNNING")
    assert (states[data["job_id"]]["state"], states[data["job_id"]]["exit_code"]) == ("FAILED", 7)
    assert cli("cancel", job_id).exit_code == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = json.loads(cli("status", job_id, "--json").stdout)[0]
        if row["state"] == "CANCELLED":
            break
        time.sleep(0.3)
    assert row["state"] == "CANCELLED"
    logs = cli("logs", data["job_id"])
    assert logs.exit_code == 0
    unknown = cli("logs", "99999999")
    assert unknown.exit_code == 8 and "not submitted by pixi-deploy" in unknown.stderr


def _metadata(path: str) -> dict[str, object]:
    return DeploymentMetadata(
        deployment_path=path,
        environment="default",
        platform="linux-64",
        lock_hash="x",
        created="2024-01-01T00:00:00+00:00",
        target="ssh://test",
        activate_script=f"{path}/activate.sh",
    ).__dict__


def test_submit_multi_node_and_fault_options_reach_the_job_script(
    ssh_env,
    base: str,
    demo_env: str,
    tmp_path: Path,
    cli,
    monkeypatch,
    multi_node_cluster,
    transport,
) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    deployment = tmp_path / "deployment_metadata.json"
    deployment.write_text(json.dumps({**_metadata(demo_env)}))
    node = multi_node_cluster.nodes[0]
    done = cli(
        "submit", "--deployment", deployment, "--partition", multi_node_cluster.partition,
        "--nodes", "1", "--ntasks-per-node", "2", "--nodelist", node, "--requeue",
        "--signal", "USR1@30", "--time", "5", "--json", "--", "srun", "hostname",
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["state"] == "COMPLETED" and data["stdout_tail"].split() == [node, node]
    run = SlurmClient(transport, base).job(data["job_id"]).run_dir
    script = transport.read_bytes(f"{run}/job.sh").decode()
    for directive in (
        "--ntasks-per-node=2",
        f"--nodelist={node}",
        "--requeue",
        "--open-mode=append",
        "--signal=B:USR1@30",
    ):
        assert f"#SBATCH {directive}\n" in script
    bad = cli("submit", "--deployment", deployment, "--signal", "USR1@soon", "--", "true")
    assert bad.exit_code == 8 and "is not a signal spec" in bad.stderr
