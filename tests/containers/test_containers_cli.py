"""The commands through `pixi_deploy.cli.main`: output, --json, and one-line errors + exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixi_deploy.cli import main
from pixi_deploy.errors import ContainerError, WorkspaceError
from pixi_deploy.workspace import Workspace


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_dockerfile_json(simple: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys, "dockerfile", "--manifest-path", str(simple.root), "--port", "8000", "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["written"] == [
        str(simple.root / "Dockerfile"),
        str(simple.root / ".dockerignore"),
    ]
    assert report["environment"] == "default"
    assert report["platforms"][:2] == ["linux-64", "linux-aarch64"]
    assert len(report["lock_hash"]) == 64
    assert "EXPOSE 8000" in (simple.root / "Dockerfile").read_text()


def test_apptainer_and_ci_commands(simple: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(simple.root)
    code, out, err = run(capsys, "apptainer", "--manifest-path", root, "--cuda", "12")
    assert code == 0, err
    assert f"wrote {simple.root / 'pixi.def'}" in out
    code, out, err = run(
        capsys, "ci", "github", "--manifest-path", root, "--apptainer", "--deploy-cluster"
    )
    assert code == 0, err
    assert (simple.root / ".github/workflows/container.yml").is_file()
    code, out, err = run(capsys, "ci", "gitlab", "--manifest-path", root, "--json")
    assert code == 0, err
    assert json.loads(out)["written"] == [str(simple.root / ".gitlab-ci.yml")]


def test_cuda_environment_warns_without_cuda(
    gpu: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "dockerfile", "--manifest-path", str(gpu.root))
    assert code == 0
    assert "warning:" in err and "--cuda" in err


@pytest.mark.parametrize(
    "command",
    [["dockerfile"], ["apptainer"], ["ci", "github"], ["ci", "gitlab"]],
)
def test_unknown_environment(
    simple: Workspace, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, _, err = run(capsys, *command, "--manifest-path", str(simple.root), "-e", "nope")
    assert code == WorkspaceError.exit_code
    line = one_line_error(err)
    assert "unknown environment 'nope'" in line and "known: default" in line
    assert {p.name for p in simple.root.iterdir()} == {
        "pixi.lock",
        "pixi.toml",
        "SOURCE.txt",
        "src",
    }


@pytest.mark.parametrize(
    ("command", "existing"),
    [
        (["dockerfile"], "Dockerfile"),
        (["apptainer"], "pixi.def"),
        (["ci", "github"], ".github/workflows/container.yml"),
        (["ci", "gitlab"], ".gitlab-ci.yml"),
    ],
)
def test_existing_file_needs_force(
    simple: Workspace, capsys: pytest.CaptureFixture[str], command: list[str], existing: str
) -> None:
    path = simple.root / existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("user's own\n")
    code, _, err = run(capsys, *command, "--manifest-path", str(simple.root))
    assert code == ContainerError.exit_code
    line = one_line_error(err)
    assert existing.rsplit("/", 1)[-1] in line and "--force" in line
    assert path.read_text() == "user's own\n"
    code, _, err = run(capsys, *command, "--manifest-path", str(simple.root), "--force")
    assert code == 0, err
    assert path.read_text() != "user's own\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dockerfile", "--cuda", "abc"], "--cuda 'abc' is not a CUDA version"),
        (["apptainer", "--cuda", "12.x"], "--cuda '12.x' is not a CUDA version"),
        (["ci", "github", "--cuda", "abc"], "--cuda 'abc' is not a CUDA version"),
        (["dockerfile", "--port", "0"], "--port 0 is out of range"),
        (["dockerfile", "--cmd", "'unclosed"], "--cmd"),
        (["dockerfile", "--src", "nowhere"], "--src nowhere does not exist"),
        (["ci", "github", "--registry", "https://x"], "--registry 'https://x'"),
        (["ci", "gitlab", "--image", "Bad Name"], "--image 'Bad Name'"),
    ],
)
def test_invalid_option_values(
    simple: Workspace, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    before = sorted(p.name for p in simple.root.iterdir())
    code, _, err = run(capsys, *args, "--manifest-path", str(simple.root))
    assert code == ContainerError.exit_code
    assert expected in one_line_error(err)
    assert sorted(p.name for p in simple.root.iterdir()) == before


def test_non_numeric_port(simple: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dockerfile", "--port", "http", "--manifest-path", str(simple.root))
    assert code == ContainerError.exit_code
    assert "--port 'http' is not a port number" in one_line_error(err)
    assert not (simple.root / "Dockerfile").exists()


def test_missing_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "dockerfile", "--manifest-path", str(tmp_path))
    assert code == WorkspaceError.exit_code
    assert "no pixi.toml or pyproject.toml" in one_line_error(err)
