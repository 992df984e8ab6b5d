"""Definitions: two assets and an asset check whose payloads run where ComputeResource says.

The asset code never changes; ``PIXI_DEPLOY_DAGSTER_MODE`` picks the resource:

- ``local`` (default): payloads run here, with this Python; no cluster needed.
- ``slurm``: the pixi environment of ``PIXI_DEPLOY_DAGSTER_MANIFEST`` (default: this folder) is
  deployed on demand, then each asset is one Slurm job.
- ``slurm-session``: both assets run as steps of one allocation; with
  ``PIXI_DEPLOY_DAGSTER_ENV_PATH`` set to a deployed environment nothing is packed at all.

The cluster comes from the usual ``SLURM_EDGE_NODE_*`` and ``SLURM_DEPLOYMENT_BASE_PATH``.
(No ``from __future__ import annotations`` here: Dagster reads the context annotation.)
"""

import os
from pathlib import Path

import dagster as dg

from pixi_deploy.dagster import (
    BashLauncher,
    ComputeResource,
    SessionResource,
    SlurmQueueConfig,
    SlurmResource,
    SSHConnectionResource,
)

HERE = Path(__file__).resolve().parent
PAYLOADS = HERE / "payloads"


def _extras() -> dict[str, object]:
    # a folder on the machine the payloads run on (the cluster's shared file system there)
    return {"data_dir": os.environ.get("PIXI_DEPLOY_DAGSTER_DATA_DIR", "~/.pixi-deploy-example")}


def make_compute(mode: str | None = None) -> ComputeResource:
    """The ComputeResource for ``mode`` (default: ``$PIXI_DEPLOY_DAGSTER_MODE`` or local)."""
    mode = mode or os.environ.get("PIXI_DEPLOY_DAGSTER_MODE", "local")
    if mode == "local":
        return ComputeResource(mode="local", default_launcher=BashLauncher())
    slurm_resource = SlurmResource(
        ssh=SSHConnectionResource.from_env(),
        queue=SlurmQueueConfig(
            partition=os.environ.get("SLURM_PARTITION", ""), time_limit="00:10:00", cpus=1
        ),
        remote_base=os.environ.get("SLURM_DEPLOYMENT_BASE_PATH"),
    )
    manifest = os.environ.get("PIXI_DEPLOY_DAGSTER_MANIFEST", str(HERE))
    if mode == "slurm":
        return ComputeResource(
            mode="slurm",
            slurm=slurm_resource,
            default_launcher=BashLauncher(),
            auto_detect_platform=True,
            manifest_path=manifest,
        )
    if mode == "slurm-session":
        return ComputeResource(
            mode="slurm-session",
            slurm=slurm_resource,
            session=SessionResource(enabled=True, num_nodes=1, time_limit="00:20:00"),
            default_launcher=BashLauncher(),
            pre_deployed_env_path=os.environ.get("PIXI_DEPLOY_DAGSTER_ENV_PATH") or None,
            manifest_path=manifest,
        )
    raise ValueError(f"PIXI_DEPLOY_DAGSTER_MODE={mode!r}: use local, slurm or slurm-session")


@dg.asset(description="Random numbers, written next to where the payload runs")
def raw_numbers(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(
        context=context,
        payload_path=str(PAYLOADS / "generate.py"),
        extras={**_extras(), "count": 1000, "seed": 7},
    ).get_materialize_result()


@dg.asset(
    deps=[raw_numbers],
    description="Mean and spread of the numbers",
    check_specs=[dg.AssetCheckSpec("mean_is_plausible", asset="summary")],
)
def summary(context: dg.AssetExecutionContext, compute: ComputeResource):
    return compute.run(
        context=context, payload_path=str(PAYLOADS / "summarize.py"), extras=_extras()
    ).get_materialize_result()


ASSETS = [raw_numbers, summary]

# The in-process executor is quicker for two small assets; with the multiprocess executor the
# step processes share slurm-session's allocation too (they attach to the run's allocation).
defs = dg.Definitions(
    assets=ASSETS, resources={"compute": make_compute()}, executor=dg.in_process_executor
)
