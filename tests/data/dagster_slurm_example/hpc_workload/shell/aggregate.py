"""Payload: aggregation."""

import os

from dagster_pipes import PipesContext, open_dagster_pipes


def main() -> None:
    context = PipesContext.get()
    context.log.info(f"Aggregating {os.environ.get('PROCESSED_DATA')}")
    context.report_asset_materialization(
        metadata={"total_records": 1000, "slurm_job": os.environ.get("SLURM_JOB_ID", "local")}
    )


if __name__ == "__main__":
    with open_dagster_pipes():
        main()
