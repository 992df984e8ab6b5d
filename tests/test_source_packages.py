"""pixi-build source packages (``conda: <path>`` in the lock) are never dropped silently:
`inspect` lists them, every command that ships an environment refuses it with one line naming
them and the way out, and a built package passed with ``--inject`` takes their place."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from helpers.source_packages import add_source_package
from pixi_deploy.testing.channel import PackageSpec, build_package
from pixi_deploy.workspace import load_workspace

REFUSAL = "pixi-build source package with no built archive: mytool (src/mytool)"


@pytest.fixture
def build_ws(fresh_demo_ws: Path) -> Path:
    return add_source_package(fresh_demo_ws)


def _built_mytool(folder: Path, depends: tuple[str, ...] = ("greet",)) -> Path:
    spec = PackageSpec(
        name="mytool",
        version="0.1.0",
        build="h0_0",
        subdir="linux-64",
        depends=list(depends),
        files={"bin/mytool": "#!/bin/sh\necho built mytool\n"},
        executables=frozenset({"bin/mytool"}),
    )
    return build_package(spec, folder)


def test_inspect_lists_source_packages(build_ws: Path, cli) -> None:
    resolved = load_workspace(build_ws).resolve("default", "linux-64")
    assert [(p.name, p.location) for p in resolved.source_packages] == [("mytool", "src/mytool")]
    assert load_workspace(build_ws).resolve("default", "linux-aarch64").source_packages == ()
    out = cli("inspect", "--manifest-path", build_ws, "--json")
    assert out.exit_code == 0, out.stderr
    data = json.loads(out.stdout)
    summary = data["environments"]["default"]["platforms"]["linux-64"]
    assert summary["source_packages"] == [
        {"name": "mytool", "version": "0.1.0", "build": "h0_0", "path": "src/mytool"}
    ]
    assert summary["conda_packages"] == 4  # the binary packages, counted as before
    assert any("mytool (src/mytool)" in p for p in data["problems"])
    table = cli("inspect", "--manifest-path", build_ws)
    assert "must be built" in table.stderr and "mytool (src/mytool)" in table.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["pack", "-o", "{tmp}/out.tar"],
        ["pack", "--self-extracting", "-o", "{tmp}/out.sh"],
        ["deploy", "--target", "local", "--base", "{tmp}/store"],
        ["image", "--base", "scratch", "--tag", "t/x:1", "--dest", "{tmp}/img"],
        ["run", "--base", "{tmp}/store", "--", "true"],
    ],
    ids=["pack", "self-extracting", "deploy", "image", "run"],
)
def test_every_command_refuses_unbuilt_sources(
    build_ws: Path, tmp_path: Path, cli, command: list[str]
) -> None:
    args = [a.format(tmp=tmp_path) for a in command]
    where = args.index("--") if "--" in args else len(args)
    args[where:where] = ["--manifest-path", str(build_ws), "-p", "linux-64"]
    out = cli(*args)
    assert out.exit_code == 2, out.stderr
    assert REFUSAL in out.stderr and "--inject" in out.stderr and "pixi publish" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name not in ("demo",)]
    assert leftovers == [], leftovers  # nothing written, not even a store folder


def test_injected_build_replaces_the_source_package(build_ws: Path, tmp_path: Path, cli) -> None:
    built = _built_mytool(tmp_path / "built")
    out = cli(
        "deploy", "--manifest-path", build_ws, "-p", "linux-64", "--base", tmp_path / "store",
        "--inject", built, "--metadata-out", tmp_path / "m.json", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.stderr
    prefix = Path(json.loads(out.stdout)["deployment_path"])
    assert (prefix / "bin" / "mytool").read_text() == "#!/bin/sh\necho built mytool\n"
    assert (prefix / "conda-meta" / "mytool-0.1.0-h0_0.json").is_file()


def test_injected_build_that_conflicts_with_the_lock_is_refused(
    build_ws: Path, tmp_path: Path, cli
) -> None:
    built = _built_mytool(tmp_path / "built", depends=("greet >=9",))
    out = cli(
        "pack", "--manifest-path", build_ws, "-p", "linux-64", "-o", tmp_path / "p.tar",
        "--inject", built,
    )  # fmt: skip
    assert out.exit_code == 3, out.stderr
    assert "greet" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "p.tar").exists()


@pytest.mark.cluster
def test_submit_refuses_before_anything_moves(
    build_ws: Path, ssh_env, tmp_path: Path, cli, monkeypatch
) -> None:
    base = f"{ssh_env.base_path}/src-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    out = cli("submit", "--manifest-path", build_ws, "--", "true")
    assert out.exit_code == 2 and REFUSAL in out.stderr, out.stderr
    from pixi_deploy.transport import get_transport

    probe = get_transport().run(["sh", "-c", 'ls -A "$1" 2>/dev/null | wc -l', "sh", base])
    assert probe.stdout.strip() == "0"  # no store, no run folder, no job
