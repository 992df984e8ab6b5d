"""Payload that reports which Slurm job (allocation) it ran in, for the session tests."""

import os

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.report_asset_materialization(
        metadata={
            "payload_slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "slurm_step_id": os.environ.get("SLURM_STEP_ID", ""),
        }
    )
