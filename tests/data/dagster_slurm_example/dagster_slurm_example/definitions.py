import dagster as dg

from dagster_slurm_example.defs.shell import shell_assets
from dagster_slurm_example.resources import get_resources

defs = dg.Definitions(
    assets=[
        shell_assets.process_data,
        shell_assets.aggregate_results,
        shell_assets.subprocess_asset,
    ],
    asset_checks=[shell_assets.no_empty_order_check],
    resources=get_resources(),
)
