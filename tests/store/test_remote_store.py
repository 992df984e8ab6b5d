"""The remote store against the real sshd + Slurm login node on 127.0.0.1 (scripts/test-cluster)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpers.connections import CutReporter
from helpers.files import age
from pixi_deploy.pack import DownloadCache
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import build_channel, demo_specs, lock_workspace, with_bumped
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.cluster
CLI = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture
def settings(ssh_settings) -> SSHSettings:
    return ssh_settings


@pytest.fixture
def base(test_cluster) -> str:
    return f"{test_cluster.base_path}/t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def transport(settings: SSHSettings):
    with Transport(settings) as t:
        yield t


def _env_ok(transport: Transport, path: str) -> bool:
    script = '[ -f "$1/deployment_metadata.json" ] && [ -f "$1/activate.sh" ] && . "$1/activate.sh" && greet'
    return transport.run_script(script, [path], check=False).exit_status == 0


def test_cli_deploy_ssh_then_noop_then_run(
    ssh_env, base: str, demo_ws: Path, tmp_path: Path, cli, monkeypatch
) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    result = cli("deploy", "--target", "ssh", "--manifest-path", demo_ws, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    key = load_workspace(demo_ws).resolve("default", "linux-64").short_hash
    assert data["deployment_path"] == f"{base}/envs/{key}"
    assert data["platform"] == "linux-64"  # detected from the edge node's uname
    assert data["target"].startswith("ssh://pdtest@127.0.0.1:")
    local = json.loads((tmp_path / "deployment_metadata.json").read_text())
    assert local["deployment_path"] == data["deployment_path"]
    out = subprocess.run(
        ["jq", "-er", ".deployment_path", "deployment_metadata.json"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() == data["deployment_path"]
    again = cli("deploy", "--target", "ssh", "--manifest-path", demo_ws, "--json")
    assert json.loads(again.stdout)["reused"] is True


def test_noop_redeploy_is_one_round_trip(
    settings: SSHSettings, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    ws = load_workspace(demo_ws)
    cache = DownloadCache(tmp_path / "cache")
    with Transport(settings) as t:
        first = RemoteStore(t, base).deploy(ws, cache=cache)
        assert first.reused is False and _env_ok(t, first.deployment_path)
        remote_copy = json.loads(t.read_bytes(f"{first.deployment_path}/deployment_metadata.json"))
        assert remote_copy["lock_hash"] == first.lock_hash
    abandoned = cache.root / "staging" / "deploy-killed"  # as a kill -9 leaves it, aged
    (abandoned / "prefix").mkdir(parents=True)
    age(abandoned)
    with Transport(settings) as t:
        again = RemoteStore(t, base).deploy(ws, cache=cache)
        assert again.reused is True and again.deployment_path == first.deployment_path
        assert t.stats.bytes_uploaded == 0
        assert t.stats.commands_run == 1  # platform + presence in one probe
        assert t.stats.connections_opened == 1
    assert not abandoned.exists(), "a reusing deploy must still clean what killed deploys left"


@pytest.mark.parametrize(
    ("compress", "gnu_tar", "raw_payloads"),
    [(None, True, None), (None, True, False), (False, True, False), (None, False, False)],
    ids=["raw-payloads", "zstd-gnu-tar", "plain-gnu-tar", "zstd-python-tar"],
)
def test_one_package_changed_moves_about_that_package(
    transport: Transport,
    base: str,
    tmp_path: Path,
    compress: bool | None,
    gnu_tar: bool,
    raw_payloads: bool | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pixi_deploy.store.bundle as bundle

    monkeypatch.setattr(bundle, "_gnu_tar", lambda: gnu_tar)
    specs = demo_specs(("linux-64",))
    build_channel(tmp_path / "c1", specs)
    lock_workspace(
        tmp_path / "w1",
        tmp_path / "c1",
        {"default": ["greet", "greet-config", "greet-data"]},
        ["linux-64"],
    )
    # a new version of one package appears in the same channel, and the workspace re-locks
    newer = [s for s in with_bumped(specs, "greet-data") if s.name == "greet-data"]
    build_channel(tmp_path / "c1", specs + newer)
    lock_workspace(
        tmp_path / "w2",
        tmp_path / "c1",
        {"default": ["greet", "greet-config", "greet-data"]},
        ["linux-64"],
    )
    store = RemoteStore(transport, base, compress=compress, raw_payloads=raw_payloads)
    cache = DownloadCache(tmp_path / "cache")
    store.deploy(load_workspace(tmp_path / "w1"), cache=cache)
    cold = store.last_transfer
    second = store.deploy(load_workspace(tmp_path / "w2"), cache=cache)
    incremental = store.last_transfer
    assert incremental.groups_total == cold.groups_total
    # with raw payloads a package is two groups: its payload and its conda-meta record
    assert incremental.groups_sent == (2 if raw_payloads is None else 1)
    assert incremental.raw_payloads_sent == (1 if raw_payloads is None else 0)
    assert incremental.bundle_bytes < cold.bundle_bytes
    assert _env_ok(transport, second.deployment_path)
    data = transport.run(["cat", f"{second.deployment_path}/share/greet-data/greetings.txt"]).stdout
    assert data  # the changed package's files are there
    # unchanged packages' files are hard links shared with the first environment
    links = transport.run(
        ["stat", "-c", "%h", f"{second.deployment_path}/etc/greet.conf"]
    ).stdout.strip()
    assert int(links) >= 3  # object + two environments


def test_explicit_platform_wins(
    transport: Transport, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    metadata = RemoteStore(transport, base).deploy(
        load_workspace(demo_ws), "default", "linux-aarch64", cache=DownloadCache(tmp_path / "c")
    )
    assert metadata.platform == "linux-aarch64"
    meta = transport.run_script(
        'cat "$1"/conda-meta/libgreet-*.json', [metadata.deployment_path]
    ).stdout
    assert '"subdir": "linux-aarch64"' in meta


def test_names_list_prune_in_use(
    transport: Transport, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    store = RemoteStore(transport, base)
    ws = load_workspace(demo_ws)
    cache = DownloadCache(tmp_path / "c")
    default = store.deploy(ws, "default", "linux-64", name="proj/v2024.02", cache=cache)
    time.sleep(1.1)
    extra = store.deploy(ws, "extra", "linux-64", cache=cache)
    time.sleep(1.1)
    arm = store.deploy(ws, "default", "linux-aarch64", cache=cache)
    assert [d.deployment_path for d in store.deployments()] == [
        arm.deployment_path,
        extra.deployment_path,
        default.deployment_path,
    ]
    assert store.names() == {"proj/v2024.02": default.deployment_path.rsplit("/", 1)[1]}
    # a job holding the in-use lock of `extra` keeps it alive
    key = extra.deployment_path.rsplit("/", 1)[1]
    hold = 'exec 9>"$1" && flock -s 9 && echo held && exec sleep 600'
    holder = transport.iter_lines(["sh", "-c", hold, "sh", f"{base}/locks/{key}.in-use"])
    try:
        assert next(iter(holder.follow()))[1] == "held"
        assert store.prune(0) == [arm.deployment_path]
    finally:
        holder.close()
    assert store.prune(0) == [extra.deployment_path]
    assert [d.deployment_path for d in store.deployments()] == [default.deployment_path]
    assert _env_ok(transport, default.deployment_path)
    # objects no environment links any more were collected; the named one's remain
    objects = transport.run_script('ls "$1/objects" | wc -l', [base]).stdout.strip()
    assert int(objects) >= 1


def test_concurrent_deploys_do_the_work_once(
    settings: SSHSettings, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    results = []

    def one(i: int) -> None:
        with Transport(settings) as t:
            results.append(
                RemoteStore(t, base).deploy(
                    load_workspace(demo_ws), cache=DownloadCache(tmp_path / f"c{i}")
                )
            )

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(results) == 4
    assert sorted(r.reused for r in results) == [False, True, True, True]
    assert len({r.deployment_path for r in results}) == 1


def test_kill_9_at_random_moments_keeps_store_consistent(
    ssh_env, base: str, demo_ws: Path, tmp_path: Path, transport: Transport
) -> None:
    key = load_workspace(demo_ws).resolve("default", "linux-64").short_hash
    final = f"{base}/envs/{key}"
    env = {
        **os.environ,
        "SLURM_DEPLOYMENT_BASE_PATH": base,
        "PIXI_DEPLOY_CACHE_DIR": str(tmp_path / "cache"),
    }
    argv = [
        sys.executable,
        "-c",
        CLI,
        "deploy",
        "--target",
        "ssh",
        "--manifest-path",
        str(demo_ws),
        "--metadata-out",
        str(tmp_path / "m.json"),
    ]
    rng = random.Random(20)
    seen = set()
    for _ in range(20):
        # a killed deploy's remote half may still be finishing: retry the cleanup briefly
        wipe = 'for i in 1 2 3 4 5 6 7 8 9 10; do rm -rf "$1" 2>/dev/null && exit 0; sleep 0.3; done; exit 1'
        transport.run_script(wipe, [f"{base}/envs"])
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        present = transport.run(["test", "-e", final], check=False).exit_status == 0
        seen.add(present)
        if present:
            assert _env_ok(transport, final), "a present environment must be complete"
    assert False in seen, "at least some kills must land before the deploy completed"
    staging = tmp_path / "cache" / "staging"
    for left in staging.glob("deploy-*"):  # what the kills left here, aged past the grace time
        age(left)
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _env_ok(transport, final)
    assert list(staging.iterdir()) == [], "the killed deploys' local staging folders remain"


def test_paths_with_spaces_quotes_and_command_substitution(
    ssh_env, base: str, demo_ws: Path, tmp_path: Path, cli, monkeypatch, transport: Transport
) -> None:
    """Such a base path is refused before anything happens on the cluster: conda environments
    embed their path in shebangs and scripts, where spaces, quotes and $(...) break or execute.
    (The transport's own quoting of such paths is tested in tests/transport.)"""
    canary = f"/tmp/pixi-deploy-pwned-{uuid.uuid4().hex[:6]}"
    for nasty in (
        f"{base}/we ird",
        f"{base}/q'uote\"dq",
        f"{base}/$(touch {canary})",
        f"{base}/`touch {canary}`",
    ):
        monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", nasty)
        result = cli(
            "deploy", "--target", "ssh", "--manifest-path", demo_ws, "--cache-dir", tmp_path / "c"
        )
        assert result.exit_code == 5, result.stderr
        assert "conda environments cannot live under" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert transport.run(["test", "-e", base], check=False).exit_status != 0, "nothing was created"
    assert transport.run(["test", "-e", canary], check=False).exit_status != 0


def test_base_not_writable(ssh_env, demo_ws: Path, tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", "/usr/share/pixi-deploy-not-yours")
    result = cli(
        "deploy", "--target", "ssh", "--manifest-path", demo_ws, "--cache-dir", tmp_path / "c"
    )
    assert result.exit_code == 5, result.stderr
    assert "cannot write under /usr/share/pixi-deploy-not-yours" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2


def test_remote_out_of_space(
    ssh_env, test_cluster, tmp_path: Path, cli, monkeypatch, transport: Transport
) -> None:
    small = f"/home/{test_cluster.user}/small-{uuid.uuid4().hex[:6]}"
    os.makedirs(small)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=200k,mode=0777", "tmpfs", small], check=True
    )
    try:
        specs = demo_specs(("linux-64",))
        from pixi_deploy.testing.channel import GeneratedBytes, PackageSpec

        specs.append(
            PackageSpec(
                name="big",
                version="1",
                subdir="linux-64",
                files={"share/big.bin": GeneratedBytes(1, 600_000)},
            )
        )
        build_channel(tmp_path / "ch", specs)
        lock_workspace(
            tmp_path / "ws", tmp_path / "ch", {"default": ["greet", "big"]}, ["linux-64"]
        )
        monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", f"{small}/store")
        result = cli(
            "deploy",
            "--target",
            "ssh",
            "--manifest-path",
            tmp_path / "ws",
            "--cache-dir",
            tmp_path / "c",
        )
        assert result.exit_code in (5, 6), result.stderr
        assert "space" in result.stderr
        leftovers = transport.run_script(
            'ls -A "$1/store/envs" 2>/dev/null || true', [small]
        ).stdout.split()
        assert [x for x in leftovers if not x.startswith(".")] == []
    finally:
        subprocess.run(["umount", "-l", small], check=False)
        os.rmdir(small)


def test_connection_cut_mid_upload_resumes(
    settings: SSHSettings, base: str, tmp_path: Path
) -> None:
    from pixi_deploy.testing.channel import GeneratedBytes, PackageSpec

    specs = [
        PackageSpec(
            name="bulk",
            version="1",
            subdir="linux-64",
            files={"share/bulk.bin": GeneratedBytes(3, 60_000_000)},
        )
    ]
    build_channel(tmp_path / "ch", specs)
    lock_workspace(tmp_path / "ws", tmp_path / "ch", {"default": ["bulk"]}, ["linux-64"])

    with Transport(settings) as t:
        # only this test's connection is cut: other users of the shared sshd keep theirs
        reporter = CutReporter(t, after_fraction=1 / 3)
        metadata = RemoteStore(t, base).deploy(
            load_workspace(tmp_path / "ws"), cache=DownloadCache(tmp_path / "c"), reporter=reporter
        )
        assert reporter.cut
        assert t.stats.reconnects >= 1
        size = t.run(
            ["stat", "-c", "%s", f"{metadata.deployment_path}/share/bulk.bin"]
        ).stdout.strip()
        assert int(size) == 60_000_000
        assert t.stats.bytes_uploaded < 60_000_000 * 1.9, "resumed, not restarted from zero"


def test_wrong_password_is_one_line_without_secret(
    ssh_env, test_cluster, demo_ws: Path, cli, monkeypatch
) -> None:
    secret = "Wr0ng-" + test_cluster.password
    monkeypatch.delenv("SLURM_EDGE_NODE_KEY_PATH")
    monkeypatch.setenv("SLURM_EDGE_NODE_PASSWORD", secret)
    result = cli("deploy", "--target", "ssh", "--manifest-path", demo_ws)
    assert result.exit_code == 6
    assert secret not in result.stderr + result.stdout
    monkeypatch.setenv("SLURM_EDGE_NODE_KEY_PATH", str(test_cluster.key_path))
    result = cli("deploy", "--target", "ssh", "--manifest-path", demo_ws)
    assert result.exit_code == 7 and "exactly one" in result.stderr
    assert secret not in result.stderr


def test_editable_path_dependency_deploys_and_code_change_moves_one_wheel(
    ssh_env, base: str, tmp_path: Path, cli, monkeypatch, transport: Transport
) -> None:
    from pixi_deploy.testing.python_pkg import make_python_workspace

    # the wrapper must run as the cluster's user: the system interpreter, not root's pyenv
    system_python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    ws = make_python_workspace(tmp_path / "py", interpreter=system_python)
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    monkeypatch.chdir(tmp_path)
    from pixi_deploy.transport import get_transport

    shared = get_transport()  # the CLI's process-wide transport
    start = shared.stats.bytes_uploaded
    first = cli(
        "deploy", "--target", "ssh", "--manifest-path", ws, "--cache-dir", tmp_path / "c", "--json"
    )
    assert first.exit_code == 0, first.stderr
    cold_bytes = shared.stats.bytes_uploaded - start
    path = json.loads(first.stdout)["deployment_path"]
    out = transport.run_script(
        '. "$1/activate.sh" && python -c "import myproj, sys; print(myproj.__file__)"', [path]
    )
    assert out.stdout.strip().startswith(
        f"{path}/lib/python"
    )  # installed, not a link to the laptop
    # a code-only change: a new deployment that moves about one wheel
    module = next((ws / "myproj").rglob("myproj/__init__.py"), None) or next(
        (ws / "myproj").rglob("*.py")
    )
    module.write_text(module.read_text() + "\nCHANGED = 'yes'\n")
    from pixi_deploy.pack.inject import prepare_environment

    cache = DownloadCache(tmp_path / "c")
    store = RemoteStore(transport, base)
    second = store.deploy(
        load_workspace(ws), prepare=lambda r: prepare_environment(r, cache), cache=cache
    )
    new_path = second.deployment_path
    assert new_path != path
    changed = transport.run_script(
        '. "$1/activate.sh" && python -c "import myproj; print(myproj.CHANGED)"', [new_path]
    )
    assert changed.stdout.strip() == "yes"
    # exactly one package group moved: the rebuilt wheel (plus the small environment part)
    assert store.last_transfer.groups_sent == 1
    assert store.last_transfer.bundle_bytes <= cold_bytes
