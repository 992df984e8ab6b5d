"""The self-extracting installer (issue 13.11): its header is covered by its own checksum, and its
digest, printed at pack time, is the sha256 of the whole file (README: how to verify one)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.workspaces import CliResult


@pytest.fixture(scope="module")
def installer(demo_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    from pixi_deploy.cli import main

    out = tmp_path_factory.mktemp("installer") / "env.sh"
    import contextlib
    import io

    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(
            ["pack", "--self-extracting", "--manifest-path", str(demo_ws), "-p", "linux-64",
             "-o", str(out), "--json"]
        )  # fmt: skip
    assert code == 0
    return out, json.loads(stdout.getvalue())["digest"]


def test_the_printed_digest_is_the_files_sha256(installer: tuple[Path, str]) -> None:
    path, digest = installer
    assert digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    run = subprocess.run(["sha256sum", str(path)], capture_output=True, text=True, check=True)
    assert "sha256:" + run.stdout.split()[0] == digest  # what the README tells users to run


@pytest.mark.parametrize(
    "edit",
    [
        (b'echo "installed ', b'touch "$HOME/p0wned"; echo "installed '),  # code added
        (b"die() {", b"die()  {"),  # a blank changed
    ],
    ids=["command-added", "one-byte"],
)
def test_an_edited_header_refuses_to_install(
    installer: tuple[Path, str], tmp_path: Path, edit: tuple[bytes, bytes]
) -> None:
    path, _ = installer
    data = path.read_bytes()
    assert edit[0] in data
    edited = tmp_path / "edited.sh"
    # keep the payload where the header says it is: shorten the filler by what was added
    grow = len(edit[1]) - len(edit[0])
    header_end = data.index(b"\n#pixi-deploy-header ") + 1  # the last header line
    line_end = data.index(b"\n", header_end)
    changed = data[:header_end].replace(edit[0], edit[1], 1) + data[header_end : line_end - grow]
    edited.write_bytes(changed + data[line_end:])
    assert len(edited.read_bytes()) == len(data)
    for args in (["--check"], ["--target", str(tmp_path / "env")]):
        run = subprocess.run(
            ["sh", str(edited), *args], capture_output=True, text=True, check=False
        )
        assert run.returncode != 0 and "damaged or was edited" in run.stderr, run.stderr
    assert not (tmp_path / "env").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.sh"]


def test_an_intact_installer_checks_and_installs(
    installer: tuple[Path, str], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    path, _ = installer
    assert (
        subprocess.run(["sh", str(path), "--check"], capture_output=True, check=False).returncode
        == 0
    )
    run = subprocess.run(
        ["sh", str(path), "--target", str(tmp_path / "env")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "env" / "activate.sh").is_file()
