"""Names and paths are input (issue 13.7, 13.10): validated where they enter, quoted wherever they
are written into shell, and default outputs never leave the current folder."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.workspaces import CliResult
from pixi_deploy.pack.layout import write_activate_script
from pixi_deploy.testing.channel import make_demo_workspace

EVIL_ENV = "x\n$(touch MARKER)\n"


def _manifest(ws: Path, replace: str, by: str) -> None:
    manifest = ws / "pixi.toml"
    manifest.write_text(manifest.read_text().replace(replace, by))


def test_an_environment_named_to_run_code_is_refused(
    fresh_demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult], monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _manifest(fresh_demo_ws, 'extra = ["extra"]', f'{EVIL_ENV!r} = ["extra"]'.replace("'", '"'))
    deploy = ["deploy", "-e", EVIL_ENV, "--base", tmp_path / "base"]
    for args in (["inspect"], ["pack", "-e", EVIL_ENV], deploy):
        result = cli(*args, "--manifest-path", fresh_demo_ws)
        assert result.exit_code == 2, (args, result.stderr)
        assert "is not a valid pixi environment name" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.rglob("MARKER"))


def test_activate_sh_quotes_whatever_it_is_given(tmp_path: Path) -> None:
    """Defence in depth: even a name that got past validation cannot break activate.sh."""
    (tmp_path / "p").mkdir()
    script = write_activate_script(tmp_path / "p", Path("/opt/env"), EVIL_ENV, "linux-64\n$(id)")
    run = subprocess.run(
        ["sh", "-c", '. "$1" && printf %s "$PIXI_ENVIRONMENT_NAME"', "sh", str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == EVIL_ENV
    assert not (tmp_path / "MARKER").exists()
    comment = [line for line in script.read_text().splitlines() if line.startswith("#")]
    assert any("x?$(touch MARKER)?" in line for line in comment)


@pytest.mark.parametrize("self_extracting", [False, True], ids=["pack", "self-extracting"])
def test_a_workspace_name_cannot_move_the_default_output(
    tmp_path: Path, cli: Callable[..., CliResult], monkeypatch, self_extracting: bool
) -> None:
    ws = make_demo_workspace(tmp_path / "deep" / "a" / "b" / "demo", platforms=("linux-64",))
    _manifest(ws, 'name = "demo"', 'name = "../../../somewhere/x"')
    here = tmp_path / "deep" / "a" / "b" / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    extra = ["--self-extracting"] if self_extracting else []
    result = cli("pack", *extra, "--manifest-path", ws, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 0, result.stderr
    written = list(here.iterdir())
    assert len(written) == 1 and "-default-linux-64-" in written[0].name  # here, and only here
    assert not (tmp_path / "deep" / "somewhere").exists() and not (tmp_path / "somewhere").exists()


def test_a_target_path_with_a_trailing_newline_is_refused(
    demo_ws: Path,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    cli: Callable[..., CliResult],
) -> None:
    pack = tmp_path_factory.mktemp("pack") / "p.tar"
    made = cli("pack", "--manifest-path", demo_ws, "-p", "linux-64", "-o", pack)
    assert made.exit_code == 0, made.stderr
    target = str(tmp_path / "env") + "\n"
    result = cli("unpack", pack, target)
    assert result.exit_code == 5 and "cannot live under" in result.stderr
    base = str(tmp_path / "base") + "\n"
    result = cli("deploy", "--manifest-path", demo_ws, "-p", "linux-64", "--base", base)
    assert result.exit_code == 5 and "cannot live under" in result.stderr
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[tool.pixi-deploy]\nenvironment = 5\n", "environment = 5 .* is not a string"),
        ("[tool.pixi-deploy]\nplatform = [1]\n", "platform = \\[1\\] .* is not a string"),
        ('[tool.pixi-deploy]\nenvironment = "a b"\n', "not a valid pixi environment name"),
    ],
)
def test_bad_defaults_in_the_manifest_are_one_line(
    fresh_demo_ws: Path, cli: Callable[..., CliResult], toml: str, match: str
) -> None:
    manifest = fresh_demo_ws / "pixi.toml"
    manifest.write_text(manifest.read_text() + "\n" + toml)
    result = cli("pack", "--manifest-path", fresh_demo_ws, "-o", fresh_demo_ws / "p.tar")
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), lines


def test_a_manifest_that_is_not_utf8_is_one_line(
    fresh_demo_ws: Path, cli: Callable[..., CliResult]
) -> None:
    manifest = fresh_demo_ws / "pixi.toml"
    manifest.write_bytes(manifest.read_bytes() + b"\n# caf\xe9\n")
    result = cli("inspect", "--manifest-path", manifest)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not UTF-8 text" in lines[0]


def test_a_deployment_name_with_a_newline_is_refused(
    demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    args = ["deploy", "--manifest-path", demo_ws, "-p", "linux-64", "--base", tmp_path / "b"]
    result = cli(*args, "--name", "proj/v1\n", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 7 and "invalid deployment name" in result.stderr
    assert not (tmp_path / "b" / "names").exists() or not any((tmp_path / "b" / "names").iterdir())
