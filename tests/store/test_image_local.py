"""Single-file environments on the local target: build, reuse, run through squashfuse, prune."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from pixi_deploy.errors import StoreError
from pixi_deploy.pack import DownloadCache
from pixi_deploy.store import LocalStore
from pixi_deploy.store.image import sha256_of
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.usefixtures("image_tools")


def _deploy(cli, ws: Path, base: Path, *extra: str) -> dict:
    result = cli(
        "deploy", "--manifest-path", ws, "--target", "local", "--base", base, "--json", *extra
    )
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_squashfs_deploy_reuse_run_and_prune(
    demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "store"
    first = _deploy(cli, demo_ws, base, "--format", "squashfs")
    key = load_workspace(demo_ws).resolve("default", "linux-64").short_hash
    image = base / "images" / f"{key}.sqfs"
    assert first["format"] == "squashfs" and first["image"] == str(image)
    assert first["deployment_path"] == str(base / "envs" / key) and not first["reused"]
    assert first["image_sha256"] == sha256_of(image)
    # one file: the mountpoint is empty, nothing else of the environment is on disk
    assert list((base / "envs" / key).iterdir()) == []
    assert sorted(p.name for p in (base / "images").iterdir()) == [f"{key}.json", f"{key}.sqfs"]
    recorded = json.loads((tmp_path / "deployment_metadata.json").read_text())
    assert recorded["image_sha256"] == first["image_sha256"]

    before = image.stat().st_ino, image.stat().st_mtime_ns
    second = _deploy(cli, demo_ws, base, "--format", "squashfs")
    assert second["reused"] is True and (image.stat().st_ino, image.stat().st_mtime_ns) == before

    # the store runs a command in the image deployment, mounted for that command only
    store = LocalStore(base, DownloadCache(tmp_path / "cache"))
    (meta,) = store.deployments()
    out = tmp_path / "out.txt"
    with open(out, "w") as handle:
        code = subprocess.run(
            [
                "python3",
                "-c",
                "import sys; from pixi_deploy.store import LocalStore, DeploymentMetadata;"
                "from pathlib import Path;"
                "s = LocalStore(Path(sys.argv[1]));"
                "sys.exit(s.run(s.deployments()[0], ['sh', '-c', 'greet; echo \"$0\"', sys.argv[2]]))",
                str(base),
                "argument",
            ],
            stdout=handle,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=os.environ.get("PYTHONPATH", "")),
        )
    assert code.returncode == 0, code.stderr
    assert "hello from greet" in out.read_text() and "argument" in out.read_text()
    assert "with squashfuse in a private user and mount namespace" in code.stderr
    assert meta.format == "squashfs"

    assert store.prune(keep=0) == [str(image)]
    assert not image.exists() and not (base / "envs" / key).exists()
    assert store.deployments() == []


def test_corrupt_image_is_refused_before_mounting(
    demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "store"
    first = _deploy(cli, demo_ws, base, "--format", "squashfs")
    image = Path(first["image"])
    with open(image, "r+b") as handle:  # truncated by a quarter
        handle.truncate(image.stat().st_size * 3 // 4)
    store = LocalStore(base)
    (meta,) = store.deployments()
    proc = subprocess.run(
        [
            "python3",
            "-c",
            "import sys; from pixi_deploy.store import LocalStore; from pathlib import Path;"
            "s = LocalStore(Path(sys.argv[1])); sys.exit(s.run(s.deployments()[0], ['greet']))",
            str(base),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 97
    assert "is corrupt or truncated" in proc.stderr and "deploy it again" in proc.stderr
    assert "hello" not in proc.stdout and meta.image == str(image)


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_redeploy_over_a_corrupt_image_builds_it_again(
    demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    """Deploy told the user "deploy it again": that must replace the image, not reuse it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    base = tmp_path / "store"
    first = _deploy(cli, demo_ws, base, "--format", "squashfs")
    image = Path(first["image"])
    with open(image, "r+b") as handle:
        if damage == "truncated":
            handle.truncate(image.stat().st_size // 2)
        else:
            handle.seek(image.stat().st_size // 2)
            byte = handle.read(1)
            handle.seek(-1, os.SEEK_CUR)
            handle.write(bytes([byte[0] ^ 0xFF]))
    damaged = sha256_of(image)
    assert damaged != first["image_sha256"]
    second = _deploy(cli, demo_ws, base, "--format", "squashfs")
    assert second["reused"] is False and second["image"] == str(image)
    assert sha256_of(image) == second["image_sha256"] != damaged
    third = _deploy(cli, demo_ws, base, "--format", "squashfs")
    assert third["reused"] is True
    assert sorted(p.name for p in (base / "images").iterdir()) == [
        f"{image.stem}.json",
        image.name,
    ]


def test_unknown_format_is_refused(demo_ws: Path, tmp_path: Path, cli) -> None:
    result = cli(
        "deploy",
        "--manifest-path",
        demo_ws,
        "--target",
        "local",
        "--base",
        tmp_path / "s",
        "--format",
        "zip",
    )
    assert result.exit_code != 0 and "unknown deployment format 'zip'" in result.stderr
    assert not (tmp_path / "s" / "images").exists()


def test_missing_mksquashfs_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pixi_deploy.store.image import build_image

    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StoreError, match="mksquashfs is not installed here"):
        build_image(tmp_path, tmp_path / "x.sqfs")


def test_full_disk_while_building_the_image(tmp_path: Path, tmpfs) -> None:
    """mksquashfs fails to write: one line naming the full disk, no partial image left."""
    from pixi_deploy.store.image import build_image

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "big").write_bytes(os.urandom(3_000_000))  # incompressible: 3 MB of image
    small = tmpfs("64k")
    with pytest.raises(StoreError, match="no space left on the device holding .* building"):
        build_image(tree, small / "env.sqfs")
    assert list(small.iterdir()) == []


def test_full_disk_during_a_squashfs_deploy_publishes_nothing(
    demo_ws: Path, tmp_path: Path, tmpfs, cli
) -> None:
    small = tmpfs("40k")
    result = cli(
        "deploy", "--manifest-path", demo_ws, "--base", small, "--cache-dir", tmp_path / "c",
        "--format", "squashfs",
    )  # fmt: skip
    assert result.exit_code == 5 and "no space left" in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "free space or pick another folder" in errors[0]
    assert list((small / "images").iterdir()) == []
