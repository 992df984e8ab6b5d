"""A job checks its compute node before the user's command runs: activate.sh refuses a node
whose glibc or CUDA driver is older than the environment needs, and the job ends FAILED with
that one line as its reason (in `submit`'s message and `status`), not a loader error in its log.

The environments are deployed with CONDA_OVERRIDE_GLIBC / CONDA_OVERRIDE_CUDA set on the deploy
side only, so the login node's check passes and the compute node's check is what refuses."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from helpers.needs import require
from pixi_deploy.target import UNMET_STATUS, TargetFacts

pytestmark = pytest.mark.cluster

HERE_GLIBC = TargetFacts.here().glibc


@pytest.mark.parametrize(
    ("need", "override", "reason"),
    [
        ("__glibc >=99", ("CONDA_OVERRIDE_GLIBC", "99.0"), f"glibc >=99 (it has {HERE_GLIBC})"),
        ("__cuda >=12", ("CONDA_OVERRIDE_CUDA", "12.2"), "cuda >=12 (it has no NVIDIA driver)"),
    ],
    ids=["glibc", "cuda"],
)
def test_a_node_that_cannot_run_the_environment_fails_the_job_with_the_reason(
    fresh_demo_ws: Path,
    ssh_env,
    multi_node_cluster,
    tmp_path: Path,
    cli,
    monkeypatch: pytest.MonkeyPatch,
    need: str,
    override: tuple[str, str],
    reason: str,
) -> None:
    workspace = require(fresh_demo_ws, need)
    base = f"{ssh_env.base_path}/nodecheck-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    for name in ("CONDA_OVERRIDE_GLIBC", "CONDA_OVERRIDE_CUDA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(*override)  # the deploy side only: the login node's check passes
    meta = tmp_path / "deployment_metadata.json"
    deployed = cli("deploy", "--target", "ssh", "--manifest-path", workspace, "--base", base, "--metadata-out", meta)  # fmt: skip
    assert deployed.exit_code == 0, deployed.stderr
    monkeypatch.delenv(override[0])

    node = multi_node_cluster.nodes[0]
    submitted = cli(
        "submit", "--deployment", meta, "--partition", multi_node_cluster.partition,
        "--nodelist", node, "--json", "--", "sh", "-c", "echo the-command-ran; greet",
    )  # fmt: skip
    assert submitted.exit_code == 8, submitted.stderr
    data = json.loads(submitted.stdout)
    line = f"{node} cannot run environment default: it needs {reason}"
    assert (data["state"], data["exit_code"]) == ("FAILED", UNMET_STATUS)
    assert data["reason"] == line
    assert "the-command-ran" not in data["stdout_tail"]
    assert data["message"].startswith(f"job {data['job_id']} failed before its command ran: {line};")  # fmt: skip
    assert data["message"] in submitted.stderr

    status = cli("status", data["job_id"], "--json")
    assert status.exit_code == 0, status.stderr
    (row,) = json.loads(status.stdout)
    assert (row["state"], row["exit_code"], row["reason"]) == ("FAILED", UNMET_STATUS, line)
    table = cli("status", data["job_id"])
    assert "cannot run environment" in " ".join(table.stdout.split())
