"""Asset payload: summarize the numbers and check that the mean is plausible."""

import json
import os
import statistics
from pathlib import Path

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    data_dir = Path(os.path.expanduser(pipes.get_extra("data_dir")))
    numbers = json.loads((data_dir / "numbers.json").read_text())
    mean = statistics.fmean(numbers)
    pipes.log.info(f"mean of {len(numbers)} numbers: {mean:.3f}")
    pipes.report_asset_materialization(
        metadata={
            "mean": mean,
            "stdev": statistics.stdev(numbers),
            "slurm_job": os.environ.get("SLURM_JOB_ID", "local"),
        }
    )
    pipes.report_asset_check(
        check_name="mean_is_plausible", passed=5.0 < mean < 15.0, metadata={"mean": mean}
    )
