"""The CLI frame: every command's --help renders, and usage errors are one line with exit 2."""

from __future__ import annotations

import pytest

from pixi_deploy.cli import app, main

COMMANDS = [
    "inspect", "pack", "unpack", "pack-info", "deploy", "run", "list", "prune", "demo",
    "image", "dockerfile", "apptainer", "ci github", "ci gitlab",
    "submit", "status", "logs", "cancel",
]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_renders(command: str, cli) -> None:
    result = cli(*command.split(), "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage: pixi-deploy" in result.stdout


def test_every_registered_command_is_covered(cli) -> None:
    cli("--help")  # registers the command modules
    names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
    covered = {c.split()[0] for c in COMMANDS}
    assert names <= covered, f"add {sorted(names - covered)} to COMMANDS"


def test_workspace_commands_take_pixis_options(cli) -> None:
    for command in ("inspect", "pack", "deploy", "run", "submit", "image", "dockerfile"):
        text = cli(command, "--help").stdout
        assert "--manifest-path" in text, command
    for command in ("pack", "deploy", "run", "submit", "image"):
        text = cli(command, "--help").stdout
        assert "--environment" in text and "--platform" in text, command


def test_usage_errors_are_short(cli) -> None:
    result = cli("prune", "--keep", "many")
    assert result.exit_code == 2
    assert "Invalid value for '--keep'" in result.stderr
    assert main(["no-such-command"]) == 2
