"""What every command module shares: the consoles and pixi's option conventions.

Kept apart from `cli` so that command modules can import them while `cli` imports the command
modules to register them, once, when the app is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# pixi's conventions: every command that reads a workspace takes these three.
ManifestPath = Annotated[
    Path | None,
    typer.Option(
        "--manifest-path",
        help="pixi.toml / pyproject.toml, or the folder holding it (default: search upwards from .)",
        show_default=False,
    ),
]
EnvironmentOpt = Annotated[
    str | None,
    typer.Option("--environment", "-e", help="Environment of the workspace (default: default)"),
]
PlatformOpt = Annotated[
    str | None,
    typer.Option(
        "--platform",
        "-p",
        help="Target platform: linux-64, linux-aarch64, ... (default: this machine's; "
        "for ssh targets 'auto', the edge node's)",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout")]

CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Download cache for packages (default: $PIXI_DEPLOY_CACHE_DIR or ~/.cache/pixi-deploy)",
        show_default=False,
    ),
]

InjectOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--inject",
        help="Add a local .conda/.tar.bz2 package or wheel (repeatable); checked against the lock",
        show_default=False,
    ),
]

BuildSdistsOpt = Annotated[
    bool,
    typer.Option("--build-sdists", help="Build wheels here from source distributions in the lock"),
]
