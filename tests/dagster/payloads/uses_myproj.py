"""Payload: imports the workspace's own project (an editable path dependency) from the
environment it runs in, and reports where it came from."""

import myproj
from dagster_pipes import open_dagster_pipes

with open_dagster_pipes() as pipes:
    pipes.report_asset_materialization(
        metadata={"myproj_file": myproj.__file__, "message": myproj.MESSAGE}
    )
