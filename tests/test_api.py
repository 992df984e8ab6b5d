"""The application layer: every entry point prepares an environment the way ``deploy`` does.

The workspace used here is what trips a second route up: an editable path dependency (the
shape of dagster-slurm's example project) and a lock whose packages come from conda-forge,
which this machine cannot reach, fetched through a mirror that only the workspace's own
``.pixi/config.toml`` names. An entry point that skipped preparation fails on the unbuilt path
dependency; one that skipped the workspace's channel settings fails to fetch; one that prepared
differently ends with another environment identity. Each is checked against ``deploy``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import pixi_deploy
from helpers.channel_server import CONDA_FORGE, Server, point_lock_at, serve_channel
from pixi_deploy import api
from pixi_deploy.containers.image import ImageOptions
from pixi_deploy.errors import ConfigError
from pixi_deploy.pack import DownloadCache, read_metadata
from pixi_deploy.slurm import JobResources
from pixi_deploy.testing.python_pkg import make_python_workspace
from pixi_deploy.workspace import load_workspace

#: the cluster's user cannot enter /root (this interpreter's pyenv): jobs wrap Debian's python
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
IMPORT_MYPROJ = "import myproj; print(myproj.__file__)"


@pytest.fixture
def mirrored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Server]]:
    """A workspace with an editable path dependency whose conda packages are locked from
    conda-forge and served by a mirror named only in the workspace's .pixi/config.toml."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # no pixi/rattler configuration of this machine
    for name in ("PIXI_HOME", "RATTLER_AUTH_FILE", "NETRC", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    root = tmp_path / "py"
    workspace = make_python_workspace(root, interpreter=SYSTEM_PYTHON)
    with serve_channel(root / "channel") as server:
        point_lock_at(workspace, root / "channel", CONDA_FORGE)
        (workspace / ".pixi").mkdir()
        (workspace / ".pixi" / "config.toml").write_text(
            f'[mirrors]\n"{CONDA_FORGE}" = ["{server.url}/"]\n'
        )
        yield workspace, server


def _prepared_hash(workspace: Path, tmp_path: Path) -> tuple[str, str]:
    """(the lock's own hash, the hash of the environment as prepared for shipping)."""
    locked = load_workspace(workspace).resolve("default", "linux-64")
    request = api.EnvironmentRequest(workspace, "default", "linux-64", tmp_path / "c-ref")
    return locked.lock_hash, api.Preparation(request).resolve().lock_hash


def _fetched(server: Server, since: int) -> int:
    return sum(1 for path, _ in server.requests[since:] if path.endswith((".conda", ".tar.bz2")))


def test_every_local_entry_point_prepares_like_deploy(
    mirrored: tuple[Path, Server], tmp_path: Path, cli
) -> None:
    workspace, server = mirrored
    locked, prepared = _prepared_hash(workspace, tmp_path)
    assert locked != prepared  # the built path dependency joins the identity
    conda_packages = len(load_workspace(workspace).resolve("default", "linux-64").conda_records)

    seen: dict[str, str] = {}
    mark = len(server.requests)

    def fresh_cache(name: str) -> Path:
        nonlocal mark
        mark = len(server.requests)
        return tmp_path / f"cache-{name}"

    meta = pixi_deploy.deploy(
        manifest_path=workspace,
        platform="linux-64",
        base=tmp_path / "s1",
        cache_dir=fresh_cache("d"),
    )
    seen["api.deploy"] = meta.lock_hash
    assert _fetched(server, mark) == conda_packages  # through the workspace's mirror

    out = cli(
        "deploy", "--manifest-path", workspace, "-p", "linux-64", "--base", tmp_path / "s2",
        "--cache-dir", fresh_cache("cli"), "--metadata-out", tmp_path / "m.json", "--json",
    )  # fmt: skip
    assert out.exit_code == 0, out.stderr
    seen["cli deploy"] = json.loads(out.stdout)["lock_hash"]
    assert _fetched(server, mark) == conda_packages

    packed = api.pack(
        manifest_path=workspace, platform="linux-64", output=tmp_path / "p.tar",
        cache_dir=fresh_cache("p"),
    )  # fmt: skip
    seen["api.pack"] = read_metadata(packed.path).lock_hash
    assert _fetched(server, mark) == conda_packages

    installer = api.pack(
        manifest_path=workspace, platform="linux-64", output=tmp_path / "env.sh",
        self_extracting=True, cache_dir=fresh_cache("sx"),
    )  # fmt: skip
    seen["api.pack --self-extracting"] = installer.resolved.lock_hash
    assert _fetched(server, mark) == conda_packages

    built = api.image(
        ImageOptions(
            base="scratch",
            tag="api/test:1",
            dest=tmp_path / "img",
            cache=DownloadCache(fresh_cache("i")),
        ),
        manifest_path=workspace,
        platform="linux-64",
    )
    seen["api.image"] = built.lock_hash
    assert _fetched(server, mark) == conda_packages

    code = api.run(
        ["python", "-c", IMPORT_MYPROJ], manifest_path=workspace, platform="linux-64",
        base=tmp_path / "s3", cache_dir=fresh_cache("r"),
    )  # fmt: skip
    assert code == 0
    (ran,) = api.list_deployments("local", tmp_path / "s3")[0]
    seen["api.run"] = ran.lock_hash

    assert seen == dict.fromkeys(seen, prepared), seen


def test_unpacked_path_dependency_imports(mirrored: tuple[Path, Server], tmp_path: Path) -> None:
    workspace, _ = mirrored
    packed = api.pack(manifest_path=workspace, platform="linux-64", output=tmp_path / "p.tar")
    result = api.unpack(packed.path, tmp_path / "env")
    run = subprocess.run(
        ["sh", "-c", f'. "$0" && python -c "{IMPORT_MYPROJ}"', str(result.activate_script)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().startswith(f"{tmp_path / 'env'}/lib/python")


def test_python_api_defaults_match_the_cli(
    mirrored: tuple[Path, Server], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, _ = mirrored
    manifest = workspace / "pixi.toml"
    manifest.write_text(
        manifest.read_text()
        + f'\n[tool.pixi-deploy]\nbase = "{tmp_path / "from-manifest"}"\nenvironment = "default"\n'
    )
    monkeypatch.chdir(workspace)  # the manifest is found from the current folder, as pixi does
    meta = pixi_deploy.deploy(platform="linux-64", cache_dir=tmp_path / "c")
    assert meta.deployment_path.startswith(f"{tmp_path / 'from-manifest'}/envs/")
    deployments, _ = pixi_deploy.list_deployments(base=tmp_path / "from-manifest")
    assert [m.deployment_path for m in deployments] == [meta.deployment_path]
    with pytest.raises(ConfigError, match="unknown target 'nfs'"):
        pixi_deploy.deploy(target="nfs")


@pytest.mark.cluster
def test_submit_without_deployment_builds_the_path_dependency(
    mirrored: tuple[Path, Server], ssh_env, tmp_path: Path, cli, monkeypatch
) -> None:
    workspace, server = mirrored
    _, prepared = _prepared_hash(workspace, tmp_path)
    base = f"{ssh_env.base_path}/api-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    mark = len(server.requests)
    done = cli(
        "submit", "--manifest-path", workspace, "--cache-dir", tmp_path / "cache-submit",
        "--json", "--", "python", "-c", IMPORT_MYPROJ,
    )  # fmt: skip
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["state"] == "COMPLETED"
    env_path = f"{base}/envs/{prepared[:16]}"  # the environment deploy would have made
    assert f"{env_path}/lib/python" in done.stderr  # the job's stdout (stderr with --json)
    assert _fetched(server, mark) > 0  # fetched through the workspace's mirror

    job = api.submit(
        ["python", "-c", IMPORT_MYPROJ],
        manifest_path=workspace,
        resources=JobResources(time="00:05:00"),
        cache_dir=tmp_path / "cache-submit",
    )
    result = job.wait()
    assert result.ok, result.message()
    assert job.logs()[0].strip().startswith(f"{env_path}/lib/python")
