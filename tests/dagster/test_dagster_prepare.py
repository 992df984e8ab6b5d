"""Dagster's `slurm` mode deploys on demand through the same application layer as the CLI:
a workspace with an editable path dependency (dagster-slurm's example project has one) is
built into a wheel and installed, exactly as `pixi-deploy deploy` installs it, and a workspace
with unbuilt pixi-build source packages is refused as `deploy` refuses it."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from helpers.source_packages import add_source_package
from pixi_deploy import api
from pixi_deploy.dagster import BashLauncher, ComputeResource
from pixi_deploy.testing.channel import make_demo_workspace
from pixi_deploy.testing.python_pkg import add_pypi_to_lock, write_python_project

pytestmark = pytest.mark.cluster
PAYLOAD = Path(__file__).parent / "payloads" / "uses_myproj.py"


@pytest.fixture
def project_workspace(pipes_workspace: Path, tmp_path: Path) -> Path:
    """The python + dagster-pipes workspace, with the project itself added by path."""
    workspace = tmp_path / "workspace"
    shutil.copytree(pipes_workspace, workspace)  # its lock names the channel by absolute path
    manifest = workspace / "pixi.toml"
    manifest.write_text(
        manifest.read_text()
        + '\n[pypi-dependencies]\nmyproj = { path = "./myproj", editable = true }\n'
    )
    write_python_project(workspace / "myproj", message="from the project")
    add_pypi_to_lock(workspace, [("myproj", "0.1.0", "./myproj")])
    return workspace


def test_slurm_mode_deploys_an_editable_path_dependency(
    slurm_for, fresh_base: str, project_workspace: Path, tmp_path: Path
) -> None:
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_for(fresh_base),
        default_launcher=BashLauncher(),
        manifest_path=str(project_workspace),
    )

    @dg.asset
    def uses_project(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(PAYLOAD)).get_materialize_result()

    result = dg.materialize([uses_project], resources={"compute": compute})
    assert result.success
    (mat,) = result.asset_materializations_for_node("uses_project")
    meta = {k: v.value for k, v in mat.metadata.items()}
    # the environment deploy would have made for this workspace, with the project installed in it
    request = api.EnvironmentRequest(project_workspace, None, "linux-64", tmp_path / "c")
    prepared = api.Preparation(request).resolve()
    expected = f"{fresh_base}/envs/{prepared.short_hash}"
    assert meta["pixi_deploy_lock_hash"] == prepared.lock_hash
    assert meta["myproj_file"].startswith(f"{expected}/lib/python")
    assert meta["message"] == "from the project"


def test_slurm_mode_refuses_unbuilt_source_packages(
    slurm_for, fresh_base: str, tmp_path: Path
) -> None:
    workspace = add_source_package(make_demo_workspace(tmp_path / "demo"))
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm_for(fresh_base),
        default_launcher=BashLauncher(),
        manifest_path=str(workspace),
    )

    @dg.asset
    def never_runs(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(PAYLOAD)).get_materialize_result()

    result = dg.materialize([never_runs], resources={"compute": compute}, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    text = failure.step_failure_data.error.to_string()
    assert "pixi-build source package with no built archive: mytool (src/mytool)" in text
    listing = compute.slurm.transport().run(
        ["sh", "-c", 'ls -A "$1" 2>/dev/null | wc -l', "sh", fresh_base]
    )
    assert listing.stdout.strip() == "0"  # refused before anything moved
