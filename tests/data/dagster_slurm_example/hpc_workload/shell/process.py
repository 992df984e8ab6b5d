"""Payload: processing (reads its settings from the environment and Pipes extras)."""

import os

from dagster_pipes import PipesContext, open_dagster_pipes


def main() -> None:
    context = PipesContext.get()
    context.log.info("Starting data processing")
    context.log.debug(str(context.extras))
    context.log.info(
        f"Input: {os.environ.get('INPUT_DATA')} Output: {os.environ.get('OUTPUT_DATA')}"
    )
    batch = context.get_extra("config")["batch_size"]
    context.report_custom_message({"batch_size": batch})
    context.report_asset_materialization(
        metadata={
            "rows": 10 * batch,
            "batch_size": batch,
            "slurm_job": os.environ.get("SLURM_JOB_ID", "local"),
        }
    )


if __name__ == "__main__":
    with open_dagster_pipes():
        main()
