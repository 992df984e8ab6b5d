"""Dagster's `slurm` and `slurm-session` modes on a single-file (`--format squashfs`)
environment: ``[tool.pixi-deploy] format = "squashfs"`` in the workspace makes the resource's
on-demand deploy publish one image, and the payload runs with it mounted at the environment's
path (store/image.py's MOUNT_AND_RUN), through the same application layer as `deploy`."""

import shutil
from pathlib import Path

import dagster as dg
import pytest

from pixi_deploy.dagster import BashLauncher, ComputeResource, SessionResource
from pixi_deploy.workspace import load_workspace

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("image_tools")]
PAYLOADS = Path(__file__).parent / "payloads"


@pytest.fixture(scope="module")
def image_workspace(pipes_workspace: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pipes workspace, its manifest asking for image deployments (the lock is unchanged)."""
    workspace = tmp_path_factory.mktemp("dagster-image") / "workspace"
    shutil.copytree(pipes_workspace, workspace, symlinks=True)
    manifest = workspace / "pixi.toml"
    manifest.write_text(manifest.read_text() + '\n[tool.pixi-deploy]\nformat = "squashfs"\n')
    return workspace


@pytest.mark.parametrize("mode", ["slurm", "slurm-session"])
def test_dagster_runs_its_payload_in_an_image_deployment(
    slurm_for, fresh_base: str, image_workspace: Path, cluster_transport, mode: str
) -> None:
    compute = ComputeResource(
        mode=mode,
        slurm=slurm_for(fresh_base),
        session=SessionResource(enabled=True, num_nodes=1, time_limit="00:10:00"),
        default_launcher=BashLauncher(),
        auto_detect_platform=True,
        manifest_path=str(image_workspace),
    )

    @dg.asset(name="numbers", check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
    def numbers(context: dg.AssetExecutionContext, compute: ComputeResource):
        run = compute.run_session if mode == "slurm-session" else compute.run
        return run(
            context=context, payload_path=str(PAYLOADS / "report.py"), extras={"n": 7}
        ).get_materialize_result()

    result = dg.materialize([numbers], resources={"compute": compute})
    assert result.success
    (mat,) = result.asset_materializations_for_node("numbers")
    meta = {k: v.value for k, v in mat.metadata.items()}
    assert meta["rows"] == 7
    assert meta["image_mounted"] == "squashfuse"  # mounted for the payload, in its namespace
    key = load_workspace(image_workspace).resolve("default", "linux-64").short_hash
    assert meta["environment"] == f"{fresh_base}/envs/{key}"  # the payload's python came from it
    listing = cluster_transport.run(
        ["sh", "-c", 'ls -A "$1/images"; echo --; ls -A "$1/envs/$2"', "sh", fresh_base, key]
    ).stdout
    images, _, mountpoint = listing.partition("--\n")
    assert sorted(images.split()) == [f"{key}.json", f"{key}.sqfs"]
    assert mountpoint.strip() == ""  # one file on the cluster: the mountpoint stays empty
