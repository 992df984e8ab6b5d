"""Payload that records its Slurm job id in the file named by the `marker` extra, then sleeps."""

import os
import time

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    with open(pipes.get_extra("marker"), "w") as out:
        out.write(os.environ.get("SLURM_JOB_ID", str(os.getpid())))
    pipes.log.info("sleeping")
    time.sleep(float(pipes.get_extra("seconds")))
