"""The download cache is input too (issue 13.6, 13.10): a replaced archive is caught wherever it
is used, a deployment shares no inode with the cache, a cache others can write is refused, and
a read-only or full cache gets a one-line error that names the cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.workspaces import CliResult
from pixi_deploy.errors import PackError
from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.pack.layout import lay_out_environment
from pixi_deploy.progress import NullReporter
from pixi_deploy.workspace import load_workspace
from security.conftest import HostileWorkspaces

PLATFORM = "linux-64"


def _filled_cache(demo_ws: Path, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    resolved = load_workspace(demo_ws).resolve("default", PLATFORM)
    write_pack(resolved, tmp_path / "fill.tar", cache=DownloadCache(cache))
    (tmp_path / "fill.tar").unlink()
    return cache


def _poison(cache: Path) -> Path:
    """Replace a cached archive by other bytes of the same size (a planted package)."""
    entry = next(cache.rglob("greet-1*.conda"))
    entry.write_bytes(b"\0" * entry.stat().st_size)
    return entry


def _uses(kind: str, demo_ws: Path, cache: Path, tmp_path: Path) -> list[str | Path]:
    common: list[str | Path] = ["--manifest-path", demo_ws, "-p", PLATFORM, "--cache-dir", cache]
    if kind == "deploy-local":
        return ["deploy", *common, "--base", tmp_path / "base", "--metadata-out", tmp_path / "m"]
    if kind == "self-extracting":
        return ["pack", "--self-extracting", *common, "-o", tmp_path / "env.sh"]
    if kind == "image":
        return [
            "image",
            *common,
            "--base",
            "scratch",
            "--tag",
            "localhost/x:1",
            "--dest",
            tmp_path / "img.oci",
        ]
    return ["pack", *common, "-o", tmp_path / "p.tar"]


@pytest.mark.parametrize("kind", ["deploy-local", "self-extracting", "image", "pack"])
def test_an_archive_replaced_in_the_cache_is_caught_where_it_is_used(
    kind: str, demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    cache = _filled_cache(demo_ws, tmp_path)
    _poison(cache)
    result = cli(*_uses(kind, demo_ws, cache, tmp_path))
    assert result.exit_code == 3, result.stderr
    assert "does not match the sha256 in pixi.lock" in result.stderr
    assert not (tmp_path / "base" / "envs").exists() or not [
        p for p in (tmp_path / "base" / "envs").iterdir() if not p.name.startswith(".")
    ]
    assert not (tmp_path / "env.sh").exists() and not (tmp_path / "img.oci").exists()


@pytest.mark.parametrize("case", ["owner-mode-setuid"])
def test_a_deployment_shares_no_inode_with_the_cache(
    case: str,
    hostile: HostileWorkspaces,
    demo_ws: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    """Deployed files used to be hard links into the cache's extracted folders, so an edit of
    the cache changed a deployed environment. The demo has a .tar.bz2 (rattler's path) too."""
    cache = tmp_path / "cache"
    for ws in (demo_ws, hostile.workspace(case)):
        args = ["deploy", "--manifest-path", ws, "-p", PLATFORM, "--cache-dir", cache]
        result = cli(*args, "--base", tmp_path / "base", "--metadata-out", tmp_path / "m")
        assert result.exit_code == 0, result.stderr
    cached = {(s.st_dev, s.st_ino) for p in cache.rglob("*") if (s := os.lstat(p))}
    deployed = [p for p in (tmp_path / "base" / "envs").rglob("*") if p.is_file()]
    assert deployed
    for path in deployed:
        info = os.lstat(path)
        assert (info.st_dev, info.st_ino) not in cached, path
        assert info.st_nlink == 1 or path.name.endswith(".pyc"), (path, info.st_nlink)
    assert not (cache / "extracted").exists()


@pytest.mark.parametrize(
    "how", ["world-writable", "group-writable", "parent-world-writable", "other-owner", "entry"]
)
def test_a_cache_others_can_write_is_refused(
    how: str, demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    cache = _filled_cache(demo_ws, tmp_path)
    if how == "world-writable":
        os.chmod(cache, 0o777)
    elif how == "group-writable":
        os.chmod(cache, 0o775)
    elif how == "parent-world-writable":
        os.chmod(tmp_path, 0o777)  # not sticky: others could swap the cache folder
    elif how == "other-owner":
        os.chown(cache, 4242, 4242)
    else:
        os.chmod(next(cache.rglob("greet-1*.conda")), 0o666)
    try:
        result = cli(*_uses("pack", demo_ws, cache, tmp_path))
    finally:
        os.chmod(tmp_path, 0o700)
    assert result.exit_code == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and ("is not safe" in lines[0] or "only you can write" in lines[0])
    assert not (tmp_path / "p.tar").exists()


def test_a_sticky_world_writable_parent_is_fine(
    demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """/tmp is 1777: others cannot rename what is in it, so a cache below it is safe."""
    os.chmod(tmp_path, 0o1777)
    try:
        cache = _filled_cache(demo_ws, tmp_path)
        assert cli(*_uses("pack", demo_ws, cache, tmp_path)).exit_code == 0
    finally:
        os.chmod(tmp_path, 0o700)


def test_a_read_only_cache_that_lacks_a_package_names_the_cache(
    demo_ws: Path, tmp_path: Path, tmpfs: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    readonly = tmpfs("1m")
    os.chmod(readonly, 0o755)  # a tmpfs starts as 1777, which is no cache of one's own
    subprocess.run(["mount", "-o", "remount,ro", str(readonly)], check=True)
    result = cli(*_uses("pack", demo_ws, readonly, tmp_path))
    assert result.exit_code == 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == result.stderr.strip().splitlines()[-1:]  # progress first, then one line
    assert f"cannot write to the download cache {readonly}" in errors[0]


def test_a_read_only_cache_that_has_every_package_works(
    demo_ws: Path, tmp_path: Path, tmpfs: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    cache = _filled_cache(demo_ws, tmp_path)
    mount = tmpfs("8m")
    os.chmod(mount, 0o755)
    shutil.copytree(cache, mount / "c")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    for kind in ("pack", "deploy-local"):
        result = cli(*_uses(kind, demo_ws, mount / "c", tmp_path))
        assert result.exit_code == 0, (kind, result.stderr)


def test_a_full_cache_is_named_not_the_store(
    demo_ws: Path, tmp_path: Path, tmpfs: Callable[..., Path], cli: Callable[..., CliResult]
) -> None:
    full = tmpfs("8k")
    os.chmod(full, 0o755)
    args = _uses("deploy-local", demo_ws, full / "c", tmp_path)
    result = cli(*args)
    assert result.exit_code == 5, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: no space left on the device holding the download cache")
    assert str(tmp_path / "base") not in lines[-1]


def test_a_verdict_not_of_the_owner_or_of_other_bytes_is_ignored(
    hostile: HostileWorkspaces, tmp_path: Path
) -> None:
    """Deploys to a cluster remember, beside a cached archive, that its payload passed
    (pack/verdicts.py); one that another user could have planted, or one for other bytes,
    counts for nothing: the payload is checked in full, and a hostile one refused."""
    resolved = load_workspace(hostile.workspace("fifo")).resolve("default", PLATFORM)
    cache = DownloadCache(tmp_path / "cache")
    cached = cache.fetch_all(
        __import__("pixi_deploy.pack.fetch", fromlist=["x"]).artifacts_of(resolved)
    )
    evil = next(p for p in cached.values() if p.name.startswith("evil"))
    sha = evil.parent.name
    forged = evil.with_name(evil.name + ".checked.json")
    for owner, digest in ((4242, sha), (0, "0" * 64)):
        forged.write_text(
            f'{{"rules": 1, "sha256": "{digest}", "declared": [], "folders": ["lib"]}}'
        )
        os.chown(forged, owner, owner)
        with pytest.raises(PackError, match="FIFO"):
            lay_out_environment(
                resolved,
                cache,
                staging=tmp_path / f"s{owner}",
                final=Path("/remote/env"),
                reporter=NullReporter(),
                defer_payloads=True,
            )


def test_a_payload_that_passed_is_remembered_for_its_bytes_only(
    demo_ws: Path, tmp_path: Path
) -> None:
    resolved = load_workspace(demo_ws).resolve("default", PLATFORM)
    cache = DownloadCache(tmp_path / "cache")
    for run in ("first", "second"):
        lay_out_environment(
            resolved,
            cache,
            staging=tmp_path / run,
            final=Path("/remote/env"),
            reporter=NullReporter(),
            defer_payloads=True,
        )
    verdicts = sorted(p.name for p in (tmp_path / "cache").rglob("*.checked.json"))
    assert verdicts == [  # the .conda packages (the .tar.bz2 one is rattler's, checked in full)
        "greet-1.0.0-h0_0.conda.checked.json",
        "greet-config-0.1.0-h0_0.conda.checked.json",
        "greet-data-2024.1-h0_0.conda.checked.json",
    ]
    assert sorted(p.name for p in (tmp_path / "first").rglob("*")) == sorted(
        p.name for p in (tmp_path / "second").rglob("*")
    )  # the same staged prefix, whether checked in full or by the verdict
