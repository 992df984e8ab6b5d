"""Core commands: inspect, pack, unpack, deploy, run, demo. Each calls one library function."""

from __future__ import annotations

import json

import typer

from pixi_deploy.cli import JsonOpt, ManifestPath, stdout
from pixi_deploy.workspace import load_workspace


def inspect(manifest_path: ManifestPath = None, json_: JsonOpt = False) -> None:
    """Show the workspace's environments, platforms, package counts and lock hashes."""
    workspace = load_workspace(manifest_path)
    description = workspace.describe()
    if json_:
        stdout.print_json(json.dumps(description))
        return
    from rich.table import Table

    table = Table(title=f"{description['workspace']} ({workspace.manifest_path})")
    for column in ("environment", "platform", "conda", "pypi", "hash"):
        table.add_column(column)
    for env_name, entry in description["environments"].items():
        for platform, summary in entry["platforms"].items() or {"(none)": None}.items():
            if summary is None:
                table.add_row(env_name, platform, "0", "0", "")
                continue
            table.add_row(
                env_name,
                platform,
                str(summary["conda_packages"]),
                str(summary["pypi_packages"]),
                summary["hash"][:16],
            )
    stdout.print(table)
    for problem in description["problems"]:
        stdout.print(f"[yellow]warning:[/] {problem}")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
