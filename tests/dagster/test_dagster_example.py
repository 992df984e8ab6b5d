"""examples/dagster_project runs as its README says: locally, on the test cluster per asset job,
in one allocation on a pre-deployed environment, and through the `dagster` CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run_example(*args: str, env: dict[str, str] | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "examples.dagster_project.run", *args],
        cwd=REPO,
        env=env or os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-2000:]
    lines = proc.stdout.splitlines()
    return json.loads("\n".join(lines[lines.index("{") :]))


def test_example_local_mode(tmp_path: Path) -> None:
    env = {**os.environ, "PIXI_DEPLOY_DAGSTER_DATA_DIR": str(tmp_path / "data")}
    report = _run_example("--mode", "local", env=env)
    assert report["success"] and report["checks"] == {"mean_is_plausible": True}
    assert report["assets"]["raw_numbers"]["slurm_job"] == "local"
    assert (tmp_path / "data" / "numbers.json").exists()


def test_example_through_the_dagster_cli(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PIXI_DEPLOY_DAGSTER_MODE": "local",
        "PIXI_DEPLOY_DAGSTER_DATA_DIR": str(tmp_path / "data"),
    }
    command = ["dagster", "asset", "materialize", "--select", "*"]
    proc = subprocess.run(
        [*command, "-m", "examples.dagster_project.definitions"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "RUN_SUCCESS" in proc.stderr
    assert "mean_is_plausible" in proc.stderr


@pytest.fixture
def cluster_env(ssh_env, fresh_base: str) -> dict[str, str]:
    return {
        **os.environ,
        "SLURM_DEPLOYMENT_BASE_PATH": fresh_base,
        "PIXI_DEPLOY_DAGSTER_DATA_DIR": f"{fresh_base}/example-data",
    }


def test_example_slurm_mode_on_the_test_cluster(cluster_env: dict[str, str]) -> None:
    report = _run_example("--mode", "slurm", "--demo-workspace", env=cluster_env)
    raw, summary = report["assets"]["raw_numbers"], report["assets"]["summary"]
    assert report["checks"] == {"mean_is_plausible": True}
    assert raw["slurm_job"] != "local" and summary["slurm_job"] != raw["slurm_job"]
    assert raw["path"].startswith(cluster_env["SLURM_DEPLOYMENT_BASE_PATH"])
    assert raw["pixi_deploy_deployed"] == "deployed" and summary["pixi_deploy_deployed"] == "reused"


def test_example_session_mode_on_a_pre_deployed_env(cluster_env: dict[str, str]) -> None:
    report = _run_example(
        "--mode", "slurm-session", "--demo-workspace", "--pre-deploy", env=cluster_env
    )
    raw, summary = report["assets"]["raw_numbers"], report["assets"]["summary"]
    assert raw["slurm_job"] == summary["slurm_job"] != "local"  # one allocation
    assert raw["pixi_deploy_deployed"] == "pre-deployed"
    assert raw["pixi_deploy_mode"] == "slurm-session"
