"""A project written for dagster-slurm runs on pixi-deploy with only its imports changed.

tests/data/dagster_slurm_example (see its SOURCE.txt) has the shape of dagster-slurm's shipped
example: shell assets, a multi-asset, a blocking asset check and the resource factory keyed
by DAGSTER_DEPLOYMENT. Each test copies it, replaces ``dagster_slurm`` by
``pixi_deploy.dagster`` in import lines (and asserts nothing else changed), then materializes
everything locally, as one Slurm job per asset, and in one session allocation, on the real
test cluster, in-process and through the ``dagster`` CLI (one process per step).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "dagster_slurm_example"
SRC = Path(__file__).resolve().parents[2] / "src"
_IMPORT = re.compile(r"^(\s*(?:from|import)\s+)dagster_slurm(?=[.\s])", re.MULTILINE)


def swap_imports(source: Path, target: Path) -> int:
    """Copy ``source`` to ``target`` with ``dagster_slurm`` imports pointing at pixi-deploy;
    returns how many lines changed (all of them import lines)."""
    shutil.copytree(source, target)
    changed = 0
    for path in target.rglob("*.py"):
        before = path.read_text()
        after = _IMPORT.sub(r"\1pixi_deploy.dagster", before)
        old, new = before.splitlines(), after.splitlines()
        diff = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
        assert all(re.match(r"\s*(from|import) ", b) for _, b in diff), diff
        assert "dagster_slurm " not in after and "dagster_slurm." not in after
        changed += len(diff)
        path.write_text(after)
    return changed


@pytest.fixture
def example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "example"
    assert swap_imports(EXAMPLE, root) == 4  # the four import lines that name dagster_slurm
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m.startswith("dagster_slurm_example")]:
        monkeypatch.delitem(sys.modules, name)
    return root


def _definitions(deployment: str, monkeypatch: pytest.MonkeyPatch) -> dg.Definitions:
    monkeypatch.setenv("DAGSTER_DEPLOYMENT", deployment)
    import dagster_slurm_example.definitions as module  # type: ignore[import-not-found]

    return module.defs


def _materialize(defs: dg.Definitions) -> dg.ExecuteInProcessResult:
    job = defs.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral())


def _outcome(result: dg.ExecuteInProcessResult) -> tuple[dict[str, dict], dict[str, bool], dict]:
    mats = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization  # type: ignore[union-attr]
        mats["/".join(mat.asset_key.path)] = {k: v.value for k, v in mat.metadata.items()}
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    observed = {}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_OBSERVATION:
            observation = event.event_specific_data.asset_observation  # type: ignore[union-attr]
            observed = {k: v.value for k, v in observation.metadata.items()}
    return mats, checks, observed


def test_example_in_development_mode(example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _materialize(_definitions("development", monkeypatch))
    assert result.success
    mats, checks, observed = _outcome(result)
    assert set(mats) == {"process_data", "aggregate_results", "myprefix/orders", "users"}
    assert mats["process_data"]["rows"] == 1000 and mats["process_data"]["slurm_job"] == "local"
    assert mats["myprefix/orders"]["env"] == "my_value" and mats["users"]["total_users"] == 2
    assert checks == {"no_empty_order_check": True}
    assert observed == {"deployment_mode": "local", "custom_messages_count": 1}


@pytest.fixture
def on_cluster(test_cluster, pipes_workspace: Path, tmp_path: Path, monkeypatch) -> Path:  # type: ignore[no-untyped-def]
    """The example's environment variables for the test cluster; cwd is the pixi workspace it
    deploys (the example packs the project it runs in); HOME holds the user's known_hosts."""
    c = test_cluster
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(c.known_hosts, home / ".ssh" / "known_hosts")
    monkeypatch.setenv("HOME", str(home))
    for name, value in {
        "SLURM_EDGE_NODE_HOST": c.host,
        "SLURM_EDGE_NODE_PORT": str(c.port),
        "SLURM_EDGE_NODE_USER": c.user,
        "SLURM_EDGE_NODE_KEY_PATH": str(c.key_path),
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    monkeypatch.chdir(pipes_workspace)
    return home


def test_example_one_slurm_job_per_asset(example, on_cluster, monkeypatch, test_cluster) -> None:  # type: ignore[no-untyped-def]
    result = _materialize(_definitions("staging_docker", monkeypatch))
    assert result.success
    mats, checks, observed = _outcome(result)
    jobs = {mats[a]["slurm_job"] for a in ("process_data", "aggregate_results")}
    assert len(jobs) == 2 and "local" not in jobs  # two jobs
    assert mats["process_data"]["pixi_deploy_environment"].startswith(
        f"/home/{test_cluster.user}/dagster_runs/envs/"  # remote_base="$HOME/dagster_runs"
    )
    assert checks == {"no_empty_order_check": True}
    assert observed == {"deployment_mode": "slurm", "custom_messages_count": 1}


def test_example_in_one_session_allocation(example, on_cluster, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    result = _materialize(_definitions("staging_docker_session", monkeypatch))
    assert result.success
    mats, checks, observed = _outcome(result)
    jobs = {mats[a]["slurm_job"] for a in ("process_data", "aggregate_results")}
    assert len(jobs) == 1 and "local" not in jobs  # one allocation
    assert mats["users"]["pixi_deploy_mode"] == "slurm-session"
    assert checks == {"no_empty_order_check": True}
    assert observed["deployment_mode"] == "slurm-session"


def test_example_session_through_the_dagster_cli(example: Path, on_cluster: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`dagster asset materialize` runs every step in its own process: the steps still share
    one allocation (they attach to the one the first step requested)."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text("")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_DEPLOYMENT": "staging_docker_session",
        "PYTHONPATH": os.pathsep.join([str(example), str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "--select", "*"]
    proc = subprocess.run(
        [*command, "-m", "dagster_slurm_example.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-6000:]
    # read the run back from the instance's own storage: four step processes write to one
    # stderr, and their lines may interleave
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.SUCCESS
        events = instance.all_logs(run.run_id)
    succeeded = {
        e.step_key for e in events if e.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS
    }
    assert succeeded == {
        "process_data", "aggregate_results", "subprocess_asset",
        "myprefix__orders_no_empty_order_check",
    }  # fmt: skip
    holders = {
        m.group(1)
        for e in events
        if (m := re.search(r"step of the session allocation (\d+)", e.user_message or ""))
    }
    assert len(holders) == 1, holders  # four steps in four processes, one allocation
