"""Workspace discovery and lock reading, against the demo workspace and real-world pixi.locks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from helpers.workspaces import LOCKS
from pixi_deploy.errors import WorkspaceError
from pixi_deploy.testing.channel import build_channel, demo_specs, lock_workspace, with_bumped
from pixi_deploy.workspace import find_manifest, load_workspace

REAL_LOCKS = sorted(p.name for p in LOCKS.iterdir() if (p / "pixi.lock").is_file())


def _counts_from_yaml(lock_path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """An independent reading of a v4/v6 lock with PyYAML: env -> platform -> (conda, pypi)."""
    data = yaml.load(lock_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    result: dict[str, dict[str, tuple[int, int]]] = {}
    for env_name, env in data["environments"].items():
        packages = env.get("packages") or {}
        result[env_name] = {
            platform: (
                sum(1 for p in items if "conda" in p),
                sum(1 for p in items if "pypi" in p),
            )
            for platform, items in packages.items()
        }
    return result


@pytest.mark.parametrize("name", REAL_LOCKS)
def test_inspect_agrees_with_real_locks(name: str, cli) -> None:
    import json

    result = cli("inspect", "--manifest-path", LOCKS / name, "--json")
    assert result.exit_code == 0, result.stderr
    described = json.loads(result.stdout)
    expected = _counts_from_yaml(LOCKS / name / "pixi.lock")
    assert set(described["environments"]) == set(expected)
    for env_name, platforms in expected.items():
        got = described["environments"][env_name]
        assert got["channels"], "every environment names its channels"
        assert {
            p: (v["conda_packages"], v["pypi_packages"]) for p, v in got["platforms"].items()
        } == platforms
        for summary in got["platforms"].values():
            assert len(summary["hash"]) == 64


def test_lock_versions_covered() -> None:
    versions = {
        int((LOCKS / n / "pixi.lock").read_text().split("\n", 1)[0].split(":")[1])
        for n in REAL_LOCKS
    }
    assert {4, 6} <= versions


def test_cuda_and_pypi_and_many_environments() -> None:
    gpu = load_workspace(LOCKS / "pytorch-gpu-example-v6").resolve("default", "linux-64")
    assert any(v.startswith("__cuda") for v in gpu.virtual_packages)
    pypi = load_workspace(LOCKS / "pixi-pypi-v6").resolve("default", "linux-64")
    assert pypi.pypi_packages and all(p.sha256 for p in pypi.pypi_packages)
    dagster = load_workspace(LOCKS / "dagster-slurm-examples-v6")
    assert len(dagster.locked_environments()) >= 5
    assert "linux-aarch64" in dagster.locked_environments()["default"]
    path_deps = [p for p in dagster.resolve("dev", "linux-64").pypi_packages if p.is_path]
    assert path_deps, "the dagster example has editable path dependencies"


def test_hash_is_stable_across_folders_and_runs(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(LOCKS / "pixi-pypi-v6", copy)
    a = load_workspace(LOCKS / "pixi-pypi-v6").resolve("default", "linux-64").lock_hash
    b = load_workspace(copy).resolve("default", "linux-64").lock_hash
    assert a == b
    # pinned: a change of the hashing scheme must be deliberate (the last one: the manifest's
    # activation joined the hash, issue 15)
    assert a == "ecfebe67" + a[8:]


def test_hash_ignores_channel_location_but_not_content(tmp_path: Path) -> None:
    specs = demo_specs(("linux-64",))
    hashes = []
    for where in ("one", "two"):
        build_channel(tmp_path / where / "channel", specs)
        lock_workspace(
            tmp_path / where / "ws",
            tmp_path / where / "channel",
            {"default": ["greet"]},
            ["linux-64"],
        )
        hashes.append(
            load_workspace(tmp_path / where / "ws").resolve("default", "linux-64").lock_hash
        )
    assert hashes[0] == hashes[1]
    build_channel(tmp_path / "three" / "channel", with_bumped(specs, "libgreet"))
    lock_workspace(
        tmp_path / "three" / "ws",
        tmp_path / "three" / "channel",
        {"default": ["greet"]},
        ["linux-64"],
    )
    assert load_workspace(tmp_path / "three" / "ws").resolve().lock_hash != hashes[0]


def test_platform_changes_hash(demo_ws: Path) -> None:
    ws = load_workspace(demo_ws)
    assert (
        ws.resolve("default", "linux-64").lock_hash
        != ws.resolve("default", "linux-aarch64").lock_hash
    )


def test_find_manifest_like_pixi(
    tmp_path: Path, demo_ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nested = demo_ws / "src" / "pkg"
    nested.mkdir(parents=True, exist_ok=True)
    assert find_manifest(cwd=nested) == demo_ws / "pixi.toml"
    assert find_manifest(demo_ws) == (demo_ws / "pixi.toml").resolve()
    # pyproject.toml counts only with [tool.pixi]; pixi.toml wins when both exist
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(WorkspaceError, match="tool.pixi"):
        find_manifest(tmp_path)
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname='x'\n[tool.pixi.workspace]\nplatforms=[]\n"
    )
    assert find_manifest(tmp_path).name == "pyproject.toml"
    (tmp_path / "pixi.toml").write_text("[workspace]\nplatforms=[]\n")
    assert find_manifest(tmp_path).name == "pixi.toml"


def test_pyproject_manifest_and_toml_1_1() -> None:
    ws = load_workspace(LOCKS / "dagster-slurm-examples-v6" / "pyproject.toml")
    assert ws.manifest_path.name == "pyproject.toml"
    tasks = load_workspace(LOCKS / "pixi-tasks-v6")  # multi-line inline tables (TOML 1.1)
    assert set(tasks.locked_environments()) == {"default", "extra"}


def test_missing_lock_and_unknown_environment_and_platform(tmp_path: Path, demo_ws: Path) -> None:
    (tmp_path / "pixi.toml").write_text("[workspace]\nchannels=[]\nplatforms=['linux-64']\n")
    with pytest.raises(WorkspaceError, match="no pixi.lock.*pixi lock"):
        load_workspace(tmp_path).resolve()
    ws = load_workspace(demo_ws)
    with pytest.raises(WorkspaceError, match="unknown environment 'nope'.*default, extra"):
        ws.resolve("nope", "linux-64")
    with pytest.raises(
        WorkspaceError, match="platform 'osx-arm64'.*locked: linux-64, linux-aarch64"
    ):
        ws.resolve("default", "osx-arm64")


def test_manifest_platform_missing_from_lock_is_reported(fresh_demo_ws: Path, cli) -> None:
    manifest = fresh_demo_ws / "pixi.toml"
    manifest.write_text(
        manifest.read_text().replace('"linux-aarch64"]', '"linux-aarch64", "osx-arm64"]')
    )
    ws = load_workspace(fresh_demo_ws)
    assert (
        "platform 'osx-arm64' of environment 'default' is not in pixi.lock"
        in ws.missing_from_lock()
    )
    with pytest.raises(
        WorkspaceError, match="the manifest declares it but pixi.lock has no packages"
    ):
        ws.resolve("default", "osx-arm64")
    result = cli("inspect", "--manifest-path", fresh_demo_ws)
    assert result.exit_code == 0
    assert "osx-arm64" in result.stderr


def test_corrupt_lock_is_one_clear_line(fresh_demo_ws: Path, cli) -> None:
    (fresh_demo_ws / "pixi.lock").write_text("version: 6\nenvironments: [broken\n")
    result = cli("inspect", "--manifest-path", fresh_demo_ws)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot read") and "pixi lock" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_manifest_cli(tmp_path: Path, cli) -> None:
    result = cli("inspect", "--manifest-path", tmp_path)
    assert result.exit_code == 2
    assert "no pixi.toml or pyproject.toml with [tool.pixi]" in result.stderr


def test_tool_table_defaults(fresh_demo_ws: Path) -> None:
    manifest = fresh_demo_ws / "pixi.toml"
    manifest.write_text(manifest.read_text() + '\n[tool.pixi-deploy]\nenvironment = "extra"\n')
    resolved = load_workspace(fresh_demo_ws).resolve(platform="linux-64")
    assert resolved.name == "extra"
    assert any(r.name.normalized == "greet-extra" for r in resolved.conda_records)
