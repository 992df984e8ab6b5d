"""The local store: deploy, reuse, run, names, list, prune, concurrency and kill -9."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pixi_deploy.pack import DownloadCache
from pixi_deploy.store import DeploymentMetadata, LocalStore
from pixi_deploy.workspace import load_workspace

DEPLOY = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"


def _deploy_json(cli, ws: Path, base: Path, *extra: str) -> dict:
    result = cli(
        "deploy", "--manifest-path", ws, "--target", "local", "--base", base, "--json", *extra
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_deploy_writes_metadata_and_reuses(
    demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    first = _deploy_json(cli, demo_ws, tmp_path / "store")
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    assert first["deployment_path"] == str(tmp_path / "store" / "envs" / resolved.short_hash)
    assert first["lock_hash"] == resolved.lock_hash and first["reused"] is False
    for key in ("environment", "platform", "created", "git_commit", "git_dirty"):
        assert key in first
    # `jq -er '.deployment_path' deployment_metadata.json` gives the path
    jq = shutil.which("jq")
    if jq:
        out = subprocess.run(
            [jq, "-er", ".deployment_path", "deployment_metadata.json"],
            capture_output=True,
            text=True,
        )
        assert out.stdout.strip() == first["deployment_path"]
    assert (
        json.loads((tmp_path / "deployment_metadata.json").read_text())["deployment_path"]
        == first["deployment_path"]
    )
    # a second deploy does no install work: it succeeds even with the cache and channel gone
    env_dir = Path(first["deployment_path"])
    before = env_dir.stat().st_ino, (env_dir / "bin" / "greet").stat().st_mtime_ns
    shutil.rmtree(tmp_path / "cache")
    second = _deploy_json(cli, demo_ws, tmp_path / "store")
    assert second["reused"] is True and second["deployment_path"] == first["deployment_path"]
    assert (env_dir.stat().st_ino, (env_dir / "bin" / "greet").stat().st_mtime_ns) == before
    assert not (tmp_path / "cache").exists()


def test_git_commit_and_dirty_flag(
    fresh_demo_ws: Path, tmp_path: Path, cache: DownloadCache
) -> None:
    git = ["git", "-C", str(fresh_demo_ws), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    resolved = load_workspace(fresh_demo_ws).resolve("default", "linux-64")
    clean = LocalStore(tmp_path / "s1", cache).deploy(resolved)
    assert clean.git_commit == head and clean.git_dirty is False
    (fresh_demo_ws / "pixi.toml").write_text(
        (fresh_demo_ws / "pixi.toml").read_text() + "\n# edit\n"
    )
    dirty = LocalStore(tmp_path / "s2", cache).deploy(
        load_workspace(fresh_demo_ws).resolve("default", "linux-64")
    )
    assert dirty.git_commit == head and dirty.git_dirty is True


def test_run_returns_exit_code_and_output(demo_ws: Path, tmp_path: Path) -> None:
    base = tmp_path / "store"
    argv = _cli_argv("run", "--", demo_ws=demo_ws, base=base)
    ok = subprocess.run([*argv, "greet"], capture_output=True, text=True, env=_env(tmp_path))
    assert ok.returncode == 0, ok.stderr
    assert f"hello from greet 1.0.0 at {base}/envs/" in ok.stdout
    failing = subprocess.run(
        [*argv, "sh", "-c", "exit 7"], capture_output=True, text=True, env=_env(tmp_path)
    )
    assert failing.returncode == 7
    missing = subprocess.run(
        [*argv, "no-such-command-xyz"], capture_output=True, text=True, env=_env(tmp_path)
    )
    assert missing.returncode == 127


def test_run_in_pre_deployed_and_pruned(
    demo_ws: Path, tmp_path: Path, cache: DownloadCache, cli
) -> None:
    metadata = LocalStore(tmp_path / "store", cache).deploy(
        load_workspace(demo_ws).resolve("default", "linux-64")
    )
    meta_file = metadata.write(tmp_path / "deployment_metadata.json")
    result = cli("run", "--deployment", meta_file, "--", "sh", "-c", "exit 3")
    assert result.exit_code == 3
    shutil.rmtree(metadata.deployment_path)
    result = cli("run", "--deployment", meta_file, "--", "greet")
    assert result.exit_code == 5
    assert "does not exist or was pruned" in result.stderr


def test_named_deployments_list_and_prune(
    fresh_demo_ws: Path, demo_ws: Path, tmp_path: Path, cache, cli
) -> None:
    base = tmp_path / "store"
    store = LocalStore(base, cache)
    default = store.deploy(
        load_workspace(demo_ws).resolve("default", "linux-64"), name="proj/v2024.02"
    )
    time.sleep(1.1)  # `created` has one-second resolution
    extra = store.deploy(load_workspace(demo_ws).resolve("extra", "linux-64"))
    assert (base / "names" / "proj" / "v2024.02").resolve() == Path(default.deployment_path)
    listed = json.loads(cli("list", "--base", base, "--json").stdout)
    assert [d["deployment_path"] for d in listed["deployments"]] == [
        extra.deployment_path,
        default.deployment_path,
    ]
    assert listed["names"] == {"proj/v2024.02": Path(default.deployment_path).name}
    # --keep 0: the named one stays
    removed = json.loads(cli("prune", "--base", base, "--keep", "0", "--json").stdout)["removed"]
    assert removed == [extra.deployment_path]
    assert Path(default.deployment_path).is_dir() and not Path(extra.deployment_path).exists()
    with pytest.raises(Exception, match="invalid deployment name"):
        store.deploy(load_workspace(demo_ws).resolve("default", "linux-64"), name="../escape")


def test_prune_spares_environment_in_use(demo_ws: Path, tmp_path: Path) -> None:
    base = tmp_path / "store"
    argv = _cli_argv("run", "--", demo_ws=demo_ws, base=base)
    running = subprocess.Popen(
        [*argv, "sh", "-c", "touch started; sleep 5"], cwd=tmp_path, env=_env(tmp_path)
    )
    try:
        deadline = time.time() + 30
        while not (tmp_path / "started").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "started").exists()
        store = LocalStore(base)
        assert store.prune(0) == []
        assert len(store.deployments()) == 1
    finally:
        running.wait(timeout=30)
    assert LocalStore(base).prune(0) == [
        str(base / "envs" / load_workspace(demo_ws).resolve().short_hash)
    ]


def test_concurrent_deploys_do_the_work_once(demo_ws: Path, tmp_path: Path) -> None:
    base = tmp_path / "store"
    argv = _cli_argv("deploy", "--json", demo_ws=demo_ws, base=base)
    procs = [
        subprocess.Popen(
            [*argv, "--metadata-out", str(tmp_path / f"m{i}.json")],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(tmp_path),
        )
        for i in range(4)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len({r["deployment_path"] for r in results}) == 1
    assert sorted(r["reused"] for r in results) == [False, True, True, True]
    assert [p.name for p in (base / "envs").iterdir()] == [Path(results[0]["deployment_path"]).name]


def test_kill_9_during_deploy_never_leaves_half_environment(demo_ws: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    base = tmp_path / "store"
    key = load_workspace(demo_ws).resolve().short_hash
    argv = _cli_argv("deploy", demo_ws=demo_ws, base=base)
    for attempt in range(6):
        shutil.rmtree(base, ignore_errors=True)
        proc = subprocess.Popen(
            [*argv, "--metadata-out", str(tmp_path / "m.json")], env=_env(tmp_path, f"c{attempt}")
        )
        time.sleep(rng.uniform(0.3, 0.9))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        final = base / "envs" / key
        if final.exists():  # complete, or not there at all
            assert (final / "deployment_metadata.json").is_file() and (
                final / "activate.sh"
            ).is_file()
        # the next deploy always works and cleans stale staging folders
        done = subprocess.run(
            [*argv, "--metadata-out", str(tmp_path / "m.json")],
            env=_env(tmp_path, f"c{attempt}"),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert [p.name for p in (base / "envs").iterdir()] == [key]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_or_sigint_during_deploy_leaves_nothing_behind(
    demo_ws: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """The signal lands as soon as the staging folder exists (and a little later): the deploy
    stops, and neither a staging folder nor a half environment stays."""
    base = tmp_path / "store"
    key = load_workspace(demo_ws).resolve().short_hash
    argv = _cli_argv("deploy", demo_ws=demo_ws, base=base)
    envs = base / "envs"
    for attempt, delay in enumerate((0.0, 0.0, 0.01, 0.05)):
        shutil.rmtree(base, ignore_errors=True)
        proc = subprocess.Popen(
            [*argv, "--metadata-out", str(tmp_path / "m.json")], env=_env(tmp_path, f"c{attempt}")
        )
        deadline = time.monotonic() + 60
        while proc.poll() is None and not (envs.is_dir() and any(envs.iterdir())):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        time.sleep(delay)
        proc.send_signal(sig)
        # -sig: it had finished and was shutting down, when Python no longer handles signals
        assert proc.wait(timeout=60) in (0, 130, 143, -sig)
        left = sorted(p.name for p in envs.iterdir()) if envs.is_dir() else []
        assert left in ([], [key]), left  # no staging folder, whatever the moment
        if left:
            assert (envs / key / "deployment_metadata.json").is_file()


def test_store_failures(demo_ws: Path, tmp_path: Path, tmpfs, cli) -> None:
    readonly = tmpfs("1m", readonly=True)
    result = cli("deploy", "--manifest-path", demo_ws, "--base", readonly / "store")
    assert result.exit_code == 5 and "cannot write" in result.stderr
    small = tmpfs("40k")
    result = cli(
        "deploy", "--manifest-path", demo_ws, "--base", small, "--cache-dir", tmp_path / "c"
    )
    assert result.exit_code == 5 and "no space left" in result.stderr
    assert [p.name for p in (small / "envs").iterdir()] == []
    result = cli(
        "deploy", "--manifest-path", demo_ws, "--base", tmp_path / "s", "-p", "linux-aarch64"
    )
    assert result.exit_code == 5 and "deploy with -p linux-64" in result.stderr
    result = cli("deploy", "--manifest-path", demo_ws)
    assert result.exit_code == 7 and "--base" in result.stderr


def test_deployment_metadata_rejects_garbage(tmp_path: Path) -> None:
    bad = tmp_path / "deployment_metadata.json"
    bad.write_text("{not json")
    with pytest.raises(Exception, match="not valid deployment metadata"):
        DeploymentMetadata.read(bad)


def _cli_argv(*args: str, demo_ws: Path, base: Path) -> list[str]:
    """`pixi-deploy ARGS --manifest-path WS --base BASE` run in a fresh interpreter."""
    command, *rest = args
    return [
        sys.executable,
        "-c",
        DEPLOY,
        command,
        "--manifest-path",
        str(demo_ws),
        "--base",
        str(base),
        *rest,
    ]


def _env(tmp_path: Path, cache: str = "cache") -> dict[str, str]:
    import os

    return {**os.environ, "PIXI_DEPLOY_CACHE_DIR": str(tmp_path / cache)}
