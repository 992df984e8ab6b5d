"""The project's code in Dagster runs on the real test cluster: the payload and its extra files
travel in the run's code snapshot with the workspace's files (a re-run with nothing changed
sends nothing, an edit sends the edited file), and ``ComputeResource.run(task=...)`` runs a
task of the manifest in modes local, slurm and slurm-session."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pixi_deploy.dagster import ComputeResource, SessionResource

PAYLOAD = '''"""Payload inside the workspace: reads its extra file and a file of the workspace."""
import json
import os
from pathlib import Path

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    root = Path(os.environ["PIXI_PROJECT_ROOT"])
    Path("written-by-the-job.txt").write_text("x")  # the job's own copy, never the snapshot
    pipes.report_asset_materialization(
        metadata={
            "params": json.loads(Path("params.json").read_text())["value"],
            "data": (root / "lib" / "data.txt").read_text().strip(),
            "cwd": os.getcwd(),
            "root": str(root),
        }
    )
'''
TASK_PAYLOAD = '''"""Run by the `report` task: its argument, its env, what its dependency wrote."""
import os
import sys
from pathlib import Path

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.report_asset_materialization(
        metadata={
            "rows": int(sys.argv[1]),
            "greeting": os.environ.get("GREETING", ""),
            "prepared": Path("prepared.txt").read_text().strip(),
            "cwd": os.getcwd(),
        }
    )
'''
TASKS = """
[tasks]
prepare = "echo prepared-in-$(basename $(pwd)) > prepared.txt"
report = { cmd = "python payloads/task_report.py {{ n }}", args = [{ arg = "n", default = "1" }], depends-on = ["prepare"], env = { GREETING = "from-the-task" } }
"""


@pytest.fixture
def project(pipes_workspace: Path, tmp_path: Path) -> Path:
    """A private copy of the pipes workspace with a payload, a data file and tasks."""
    workspace = tmp_path / "project"
    shutil.copytree(pipes_workspace, workspace)
    with (workspace / "pixi.toml").open("a") as manifest:
        manifest.write(TASKS)
    (workspace / "payloads").mkdir()
    (workspace / "payloads" / "job.py").write_text(PAYLOAD)
    (workspace / "payloads" / "task_report.py").write_text(TASK_PAYLOAD)
    (workspace / "lib").mkdir()
    (workspace / "lib" / "data.txt").write_text("workspace data\n")
    return workspace


def _meta(result: dg.ExecuteInProcessResult, name: str) -> dict:
    (mat,) = result.asset_materializations_for_node(name)
    return {k: v.value for k, v in mat.metadata.items()}


def _logs(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> list[str]:
    return [e.user_message for e in instance.all_logs(result.run_id)]


def _snapshots(transport, base: str) -> list[str]:
    out = transport.run_script('ls -1 "$1/code" 2>/dev/null || true', [base]).stdout
    return [n for n in out.split() if not n.startswith(".")]


@pytest.mark.cluster
def test_payload_and_extra_files_travel_in_the_code_snapshot(
    project: Path, tmp_path: Path, slurm_for, fresh_base: str, cluster_transport
) -> None:
    params = tmp_path / "elsewhere" / "params.json"  # an extra file from outside the workspace
    params.parent.mkdir()
    params.write_text('{"value": 1}')

    @dg.asset
    def coded(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(project / "payloads" / "job.py"),
            extra_files=[str(params)],
        ).get_materialize_result()

    compute = ComputeResource(mode="slurm", slurm=slurm_for(fresh_base), manifest_path=str(project))
    instance = dg.DagsterInstance.ephemeral()

    def materialize() -> tuple[dict, list[str]]:
        result = dg.materialize([coded], resources={"compute": compute}, instance=instance)
        assert result.success
        return _meta(result, "coded"), _logs(instance, result)

    first, logs = materialize()
    assert first["params"] == 1 and first["data"] == "workspace data"
    # the job starts in the payload's folder of its own working copy of the snapshot
    assert first["root"].startswith(f"{fresh_base}/runs/") and first["root"].endswith("/work")
    assert first["cwd"] == f"{first['root']}/payloads"
    snapshot = first["pixi_deploy_code_snapshot"]
    assert any(f"sending code snapshot {snapshot}" in m for m in logs)
    assert _snapshots(cluster_transport, fresh_base) == [snapshot]
    files = cluster_transport.run_script(
        'cd "$1/code/$2/files" && find . -type f | sort', [fresh_base, snapshot]
    ).stdout.split()
    # the workspace, the payload where it is, the extra file next to it; nothing the job wrote
    assert files == sorted(
        [
            "./lib/data.txt",
            "./payloads/job.py",
            "./payloads/params.json",
            "./payloads/task_report.py",
            "./pixi.lock",
            "./pixi.toml",
        ]
    )

    again, logs = materialize()  # nothing changed: nothing is sent
    assert again["pixi_deploy_code_snapshot"] == snapshot and again["params"] == 1
    assert any(f"code snapshot {snapshot} is on the cluster: nothing to send" in m for m in logs)
    assert not any("sending code snapshot" in m for m in logs)
    assert again["root"] != first["root"]  # every run has its own working copy

    params.write_text('{"value": 2}')  # an edit of the extra file sends that file only
    edited, logs = materialize()
    assert edited["params"] == 2 and edited["pixi_deploy_code_snapshot"] != snapshot
    assert any("1 changed and 0 deleted files" in m for m in logs), logs


def test_task_in_local_mode(project: Path) -> None:
    @dg.asset
    def tasked(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, task="report", task_args=["5"]).get_results()

    compute = ComputeResource(mode="local", manifest_path=str(project))
    result = dg.materialize([tasked], resources={"compute": compute})
    assert result.success
    meta = _meta(result, "tasked")
    assert meta["rows"] == 5 and meta["greeting"] == "from-the-task"
    assert meta["prepared"] == "prepared-in-project"  # depends-on ran first, in the root
    assert meta["cwd"] == str(project.resolve())


def test_run_needs_a_payload_or_a_task(project: Path) -> None:
    @dg.asset
    def both(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path="x.py", task="report").get_results()

    @dg.asset
    def unknown(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, task="nope").get_results()

    compute = ComputeResource(mode="local", manifest_path=str(project))
    for asset, needle in ((both, "a payload_path or a task, not both"), (unknown, "nope")):
        result = dg.materialize([asset], resources={"compute": compute}, raise_on_error=False)
        assert not result.success
        (failure,) = [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        assert needle in failure.step_failure_data.error.to_string()


@pytest.mark.cluster
@pytest.mark.parametrize("mode", ["slurm", "slurm-session"])
def test_task_in_cluster_modes(mode: str, project: Path, slurm_for, fresh_base: str) -> None:
    @dg.asset
    def tasked(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, task="report", task_args=["7"]).get_results()

    slurm = slurm_for(fresh_base)
    session = SessionResource(slurm=slurm, num_nodes=1, time_limit="00:10:00")
    compute = ComputeResource(
        mode=mode,
        slurm=slurm,
        session=session if mode == "slurm-session" else None,
        manifest_path=str(project),
    )
    result = dg.materialize([tasked], resources={"compute": compute})
    assert result.success
    meta = _meta(result, "tasked")
    assert meta["rows"] == 7 and meta["greeting"] == "from-the-task"
    assert meta["prepared"] == "prepared-in-work"  # in the job's working copy of the snapshot
    assert meta["cwd"].startswith(f"{fresh_base}/runs/") and meta["cwd"].endswith("/work")
    assert meta["pixi_deploy_mode"] == mode


@pytest.mark.cluster
def test_a_snapshot_pruned_elsewhere_is_sent_again_for_a_session_step(
    project: Path, slurm_for, fresh_base: str, cluster_transport
) -> None:
    @dg.asset
    def coded(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(project / "payloads" / "job.py"),
            extra_files=[str(project / "lib" / "data.txt")],  # stands in for params.json
        ).get_materialize_result()

    (project / "payloads" / "params.json").write_text('{"value": 3}')
    slurm = slurm_for(fresh_base)
    compute = ComputeResource(
        mode="slurm-session",
        slurm=slurm,
        session=SessionResource(slurm=slurm, num_nodes=1, time_limit="00:10:00"),
        manifest_path=str(project),
    )
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize([coded], resources={"compute": compute}, instance=instance)
    assert first.success
    snapshot = _meta(first, "coded")["pixi_deploy_code_snapshot"]
    # another machine's prune removes it; this one still believes it is there
    cluster_transport.run(["rm", "-rf", f"{fresh_base}/code/{snapshot}"])
    again = dg.materialize([coded], resources={"compute": compute}, instance=instance)
    assert again.success
    meta = _meta(again, "coded")
    assert meta["params"] == 3 and meta["pixi_deploy_mode"] == "slurm-session"
    assert any(f"code snapshot {snapshot} was pruned" in m for m in _logs(instance, again))
    assert _snapshots(cluster_transport, fresh_base) == [snapshot]
