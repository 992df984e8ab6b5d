"""deploy --target ssh against the real test cluster, whose tar runs as the test user.

The decoys belong to the test user here (it could write them: only the deploy's own rules stop
it). Every hostile package is refused on this machine before any of it is unpacked on the
cluster, and nothing is left in the store. Then the cluster's side is tried on its own, with the
local checks bypassed: payload streams made by hand go straight into the remote scripts.
"""

from __future__ import annotations

import io
import json
import os
import pwd
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from helpers.cluster import ssh_settings_for
from helpers.workspaces import CliResult
from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.store import remote_scripts as sh
from pixi_deploy.tarwriter import TarWriter
from pixi_deploy.transport import Transport
from pixi_deploy.workspace import load_workspace
from security.cases import REFUSED
from security.conftest import PLATFORM, Decoys, HostileWorkspaces, snapshot
from security.hostile import HostilePackage, fifo, file, symlink, tar_bytes

CLUSTER_CASES = {
    **REFUSED,
    # raw payloads land in a staging folder next to the store's own markers and objects
    "reserved-name": lambda d: [HostilePackage("evil", [file(".pd-objects/fake/bin/x", "x")])],
}


@pytest.fixture(scope="module")
def pd_hostile(
    decoys_root: Path, tmp_path_factory: pytest.TempPathFactory, test_cluster
) -> HostileWorkspaces:
    owner = pwd.getpwnam(test_cluster.user).pw_uid
    decoys = Decoys(decoys_root / "pdtest", owner=owner).make()
    return HostileWorkspaces(decoys, tmp_path_factory.mktemp("pd-hostile"))


@pytest.fixture
def base(test_cluster, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = f"{test_cluster.base_path}/sec-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", path)
    return Path(path)  # the same machine: read here as root


def _store_is_empty(base: Path) -> None:
    envs = [p.name for p in (base / "envs").iterdir()] if (base / "envs").is_dir() else []
    objects = [p.name for p in (base / "objects").iterdir()] if (base / "objects").is_dir() else []
    assert envs == [] and objects == [], (envs, objects)


@pytest.mark.parametrize("case", sorted(CLUSTER_CASES))
def test_a_hostile_package_never_reaches_the_cluster(
    case: str,
    ssh_env,
    base: Path,
    pd_hostile: HostileWorkspaces,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    if case not in pd_hostile.built:
        pd_hostile.built[case] = _build(pd_hostile, case)
    decoys = pd_hostile.decoys.make()
    before = decoys.snapshot()
    args = ["deploy", "--target", "ssh", "--manifest-path", pd_hostile.built[case], "-p", PLATFORM]
    result = cli(*args, "--cache-dir", tmp_path / "cache", "--metadata-out", tmp_path / "m")
    assert result.exit_code == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == result.stderr.strip().splitlines()[-1:] and "package evil" in errors[0]
    assert decoys.snapshot() == before
    _store_is_empty(base)
    assert not (tmp_path / "m").exists()


def _build(hostile: HostileWorkspaces, case: str) -> Path:
    from security.conftest import make_workspace

    return make_workspace(hostile.folder / case, CLUSTER_CASES[case](hostile.decoys.root))


def test_owner_world_write_and_setuid_never_come_from_a_package(
    ssh_env, base: Path, hostile: HostileWorkspaces, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    ws = hostile.workspace("owner-mode-setuid")
    args = ["deploy", "--target", "ssh", "--manifest-path", ws, "-p", PLATFORM, "--json"]
    result = cli(*args, "--cache-dir", tmp_path / "cache", "--metadata-out", tmp_path / "m")
    assert result.exit_code == 0, result.stderr
    prefix = Path(json.loads(result.stdout)["deployment_path"])
    user = pwd.getpwnam(ssh_env.user).pw_uid
    for name in ("owned", "world", "setuid"):
        info = os.stat(prefix / "bin" / name)
        assert info.st_uid == user and stat.S_IMODE(info.st_mode) & 0o7022 == 0, (name, info)


def test_an_archive_replaced_in_the_cache_is_caught_before_it_is_sent(
    ssh_env, base: Path, demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    cache = tmp_path / "cache"
    resolved = load_workspace(demo_ws).resolve("default", PLATFORM)
    write_pack(resolved, tmp_path / "fill.tar", cache=DownloadCache(cache))
    entry = next(cache.rglob("greet-1*.conda"))
    entry.write_bytes(b"\0" * entry.stat().st_size)
    args = ["deploy", "--target", "ssh", "--manifest-path", demo_ws, "-p", PLATFORM]
    result = cli(*args, "--cache-dir", cache, "--metadata-out", tmp_path / "m")
    assert result.exit_code == 3 and "does not match the sha256 in pixi.lock" in result.stderr
    _store_is_empty(base)


# -- the cluster's own defences, local checks bypassed ----------------------------------------


def _env_part(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    tar = TarWriter(out, use_sendfile=False)
    tar.add_dir("env")
    for name, data in files.items():
        tar.add_bytes(f"env/{name}", data)
    tar.close()
    return out.getvalue()


def _send(transport: Transport, script: str, args: list[str], data: bytes) -> int:
    def produce(write: Callable[[bytes], None]) -> None:
        write(data)

    return transport.pipe(["sh", "-c", script, "sh", *args], produce).exit_status or 0


@pytest.mark.parametrize("with_fifo", [False, True], ids=["symlink-and-modes", "fifo"])
def test_the_cluster_never_writes_through_a_payloads_symlink(
    test_cluster, base: Path, pd_hostile: HostileWorkspaces, with_fifo: bool
) -> None:
    """A payload (sent as if the local checks had missed it) with a symlink to the decoys, then
    an environment part with a file beneath that symlink: finalize drops the payload's
    symlinks before it copies the environment part in, so the file lands inside. A FIFO in a
    payload makes finalize refuse and discard everything that came."""
    decoys = pd_hostile.decoys.make()
    before = decoys.snapshot()
    key = uuid.uuid4().hex[:16]
    members = [
        symlink("lib", str(decoys.root / "dir")),
        file("bin/world", "w", mode=0o777, uid=4242),
        file("bin/setuid", "s", mode=0o6755),
        file(".pd-staged/marker", ""),
    ]
    if with_fifo:
        members.append(fifo("bin/fifo"))
    payload = zstandard.ZstdCompressor().compress(tar_bytes(members))
    env = _env_part({"deployment_metadata.json": b"{}", "activate.sh": b"", "lib/x": b"planted"})
    with Transport(ssh_settings_for(test_cluster)) as t:
        t.run_script('mkdir -p "$1/envs" "$1/objects" "$1/locks"', [str(base)])  # as LOCK does
        assert _send(t, sh.RECEIVE_PAYLOADS, [str(base), key], payload) == 0
        assert _send(t, sh.RECEIVE, [str(base), key, "none"], env) == 0
        result = t.run_script(sh.FINALIZE, [str(base), key], check=False)
    assert decoys.snapshot() == before, "the cluster wrote through a payload's symlink"
    incoming = base / "objects" / f".incoming-{key}"
    if with_fifo:
        assert result.exit_status == 4 and "special file" in result.stderr
        assert not (base / "envs" / key).exists() and not incoming.exists()
        assert [p.name for p in (base / "envs").iterdir()] == []
        return
    assert result.exit_status == 0, result.stderr
    prefix = base / "envs" / key
    assert (prefix / "lib" / "x").read_bytes() == b"planted" and not (prefix / "lib").is_symlink()
    user = pwd.getpwnam(test_cluster.user).pw_uid
    for name in ("world", "setuid"):
        info = os.stat(prefix / "bin" / name)
        assert info.st_uid == user and stat.S_IMODE(info.st_mode) & 0o7022 == 0
    assert snapshot(prefix)  # published whole
