"""Payload: logs, reports a materialization with metadata and an asset check, echoes where it ran."""

import os
import socket

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    n = int(pipes.get_extra("n"))
    pipes.log.info(f"hello from the payload on {socket.gethostname()}")
    pipes.report_asset_materialization(
        metadata={
            "rows": n,
            "greeting": os.environ.get("GREETING", ""),
            "payload_slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
            "environment": os.environ.get("PIXI_DEPLOY_ENVIRONMENT", ""),
            "cwd": os.getcwd(),
            "image_mounted": os.environ.get("PIXI_DEPLOY_IMAGE_MOUNTED", ""),
        }
    )
    pipes.report_asset_check(check_name="positive", passed=n > 0, metadata={"n": n})
