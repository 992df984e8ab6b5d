"""Every hostile package of `cases`, against every local install path: unpack of a plain and a
zstd pack (from its file, and streamed: from standard input and from an http:// URL),
deploy --target local, the self-extracting installer and `image`. (The cluster is in
test_cluster.py.)

A refused case must end with exit code 3 and one error line naming the package, and leave
everything as it was: the decoys (content, mode, owner, link count, mtime) and the whole test
folder beside the target (no work folder, no half output), the download cache aside.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.workspaces import CliResult
from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.workspace import load_workspace
from security.cases import REFUSED
from security.conftest import PLATFORM, Guard, HostileWorkspaces
from security.streams import unpack_from

#: unpack-<compression> reads the pack's file; unpack-<stdin|http>-<compression> streams it.
UNPACKS = [
    "unpack-plain",
    "unpack-zstd",
    "unpack-stdin-plain",
    "unpack-stdin-zstd",
    "unpack-http-plain",
    "unpack-http-zstd",
]
TARGETS = [*UNPACKS, "deploy-local", "self-extracting", "image"]


def _install(
    target: str, ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> tuple[Callable[[], CliResult], Path]:
    """What to run for ``target`` (preparation, e.g. packing, done here) and where it installs."""
    cache = tmp_path / "cache"  # made here: a folder made later would change tmp_path's link count
    cache.mkdir(exist_ok=True)
    common = ["--manifest-path", ws, "-p", PLATFORM]
    if target.startswith("unpack"):
        resolved = load_workspace(ws).resolve("default", PLATFORM)
        *source, compression = target.split("-")[1:]
        pack = write_pack(
            resolved,
            tmp_path / "in.pack",
            compression="none" if compression == "plain" else compression,
            cache=DownloadCache(cache),
        ).path  # packing copies archives as they are: the check is unpack's
        where = tmp_path / "target" / "env"
        return (lambda: unpack_from((source or ["file"])[0], cli, pack, where)), where
    if target == "deploy-local":
        base = tmp_path / "base"
        for sub in ("envs", "locks", "names"):
            (base / sub).mkdir(parents=True)
        args = ["deploy", *common, "--base", base, "--cache-dir", cache]
        args += ["--metadata-out", tmp_path / "meta.json"]
        return (lambda: cli(*args)), base / "envs"
    if target == "self-extracting":
        out = tmp_path / "out" / "env.sh"
        out.parent.mkdir()
        args = ["pack", "--self-extracting", *common, "--cache-dir", cache, "-o", out]
        return (lambda: cli(*args)), out
    dest = tmp_path / "out" / "image.oci"
    dest.parent.mkdir()
    args = [
        "image",
        *common,
        "--base",
        "scratch",
        "--tag",
        "localhost/evil:1",
        "--cache-dir",
        cache,
        "--dest",
        dest,
    ]
    return (lambda: cli(*args)), dest


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_a_hostile_package_is_refused_and_touches_nothing(
    case: str,
    target: str,
    hostile: HostileWorkspaces,
    guarded: Callable[..., Guard],
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    run, _ = _install(target, hostile.workspace(case), tmp_path, cli)
    with guarded(tmp_path / "cache", tmp_path / "base" / "locks"):
        result = run()
    assert result.exit_code == 3, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == result.stderr.strip().splitlines()[-1:], result.stderr
    assert "Traceback" not in result.stderr
    assert "package evil" in errors[0], errors[0]


@pytest.mark.parametrize("target", [*UNPACKS, "deploy-local", "image"])
def test_owner_world_write_and_setuid_never_come_from_a_package(
    target: str,
    hostile: HostileWorkspaces,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    run, where = _install(target, hostile.workspace("owner-mode-setuid"), tmp_path, cli)
    result = run()
    assert result.exit_code == 0, result.stderr
    bins = sorted(where.rglob("bin/owned"))
    if target == "image":  # the image's layers: look inside the one holding the package
        return _check_image_layers(where)
    assert len(bins) == 1
    folder = bins[0].parent
    owned, world, setuid = (os.stat(folder / n) for n in ("owned", "world", "setuid"))
    assert owned.st_uid == os.geteuid() and owned.st_gid == os.getegid()  # not 4242
    assert stat.S_IMODE(world.st_mode) == 0o775  # not 0777
    assert stat.S_IMODE(setuid.st_mode) == 0o755  # not 4755


def _check_image_layers(dest: Path) -> None:
    import gzip
    import io
    import tarfile

    blobs = dest / "blobs" / "sha256"
    seen = {}
    for blob in blobs.iterdir():
        data = blob.read_bytes()
        if data[:2] != b"\x1f\x8b":
            continue
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
            for member in tar:
                if member.name.endswith(("bin/owned", "bin/world", "bin/setuid")):
                    seen[member.name.rsplit("/", 1)[1]] = (member.uid, member.mode)
    assert sorted(seen) == ["owned", "setuid", "world"]
    for uid, mode in seen.values():  # layers keep only the executable bit
        assert uid == 0 and mode & 0o7002 == 0, seen
