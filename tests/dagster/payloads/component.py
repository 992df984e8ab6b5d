"""Payload of one component of a heterogeneous job: reports where it ran, as its own asset."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    name = pipes.get_extra("hetjob_component")
    pipes.log.info(f"component {name} on {os.environ.get('SLURMD_NODENAME')}")
    pipes.report_asset_materialization(
        asset_key=name,
        metadata={
            "payload_slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "node": os.environ.get("SLURMD_NODENAME", ""),
            "cpus": os.environ.get("SLURM_CPUS_ON_NODE", ""),
        },
    )
