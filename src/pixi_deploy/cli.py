"""The `pixi-deploy` command line: parse, call one library function, render with Rich.

No logic lives here. Every command is a thin wrapper over a function the Python API exposes, and
every `PixiDeployError` becomes one red line on stderr and the error's exit code. Rooms that add
commands (containers, slurm, ...) expose ``register(app)`` in their own ``commands`` module and are
listed in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from pixi_deploy import __version__
from pixi_deploy.cli_options import stderr, stdout
from pixi_deploy.errors import PixiDeployError
from pixi_deploy.interrupts import Terminated, install_handlers

app = typer.Typer(
    name="pixi-deploy",
    help="Pack a locked pixi environment and run it unchanged on clusters and in containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts show [defaults] and paths literally; no markup
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules exposing ``register(app)``; each adds its own commands.
COMMAND_MODULES: list[str] = [
    "pixi_deploy.commands",
    "pixi_deploy.containers.commands",
    "pixi_deploy.slurm.commands",
]


def _version_callback(value: bool) -> None:
    if value:
        stdout.print(f"pixi-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Show version"),
    ] = False,
) -> None:
    """Pack a locked pixi environment and run it unchanged on clusters and in containers."""


def _register_all() -> None:
    """Each command module adds its commands to the app, once, when this module is imported."""
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def _click_classes(name: str) -> tuple[type[Exception], ...]:
    """Typer >= 0.20 vendors click as typer._click; older ones use click: catch both."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


_CLICK_ERRORS = _click_classes("ClickException")
_CLICK_ABORTS = _click_classes("Abort")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code instead of raising SystemExit."""
    install_handlers()
    try:
        result = app(args=argv, prog_name="pixi-deploy", standalone_mode=False)
        if isinstance(result, int):
            return result
    except PixiDeployError as error:
        stderr.print("[bold red]error:[/] ", end="")
        stderr.print(str(error), markup=False)
        return error.exit_code
    except typer.Exit as exit_:
        return int(exit_.exit_code or 0)
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]")
        return 130
    except Terminated:
        stderr.print("[bold red]terminated[/]")
        return 143
    except SystemExit as exit_:  # click's usage errors end up here in non-standalone mode
        return int(exit_.code or 0)
    except _CLICK_ERRORS as error:  # usage errors: bad option, missing argument, bad value
        error.show()  # type: ignore[attr-defined]
        return int(error.exit_code)  # type: ignore[attr-defined]
    except _CLICK_ABORTS:
        return 130
    return 0


_register_all()

if __name__ == "__main__":
    sys.exit(main())
