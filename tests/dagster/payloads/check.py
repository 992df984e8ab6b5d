"""Payload of an asset check: reports the check's result for the asset named in extras."""

from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    n = int(pipes.get_extra("n"))
    pipes.log.info(f"checking {n}")
    pipes.report_asset_check(
        asset_key=pipes.get_extra("asset"),
        check_name=pipes.extras.get("check", "positive"),
        passed=n > 0,
        metadata={"n": n},
    )
