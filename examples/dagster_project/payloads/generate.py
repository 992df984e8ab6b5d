"""Asset payload: make some numbers and store them where the next asset finds them.

Runs wherever ComputeResource sends it (this machine, a Slurm job, a session step) with the
same code; Dagster Pipes carries the logs and metadata back.
"""

import json
import os
import random
from pathlib import Path

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    count = int(pipes.get_extra("count"))
    data_dir = Path(os.path.expanduser(pipes.get_extra("data_dir")))
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(int(pipes.get_extra("seed")))  # noqa: S311 - sample data, not secrets
    numbers = [rng.gauss(10.0, 2.0) for _ in range(count)]
    (data_dir / "numbers.json").write_text(json.dumps(numbers))
    pipes.log.info(f"wrote {count} numbers to {data_dir}")
    pipes.report_asset_materialization(
        metadata={
            "count": count,
            "path": str(data_dir / "numbers.json"),
            "slurm_job": os.environ.get("SLURM_JOB_ID", "local"),
            "host": os.uname().nodename,
        }
    )
