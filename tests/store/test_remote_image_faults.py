"""Failure paths of `deploy --target ssh --format squashfs` against the real test cluster (issue
18, "Failure behaviour"): the connection dropped while the image is uploaded, a full disk on the
cluster while it is written, and a corrupt or truncated image already at the hash path. Each
ends with a whole image or one line, and never with a half-written `images/<hash>.sqfs` or
`.json` that a job would use. (A job on a corrupt image is refused by checksum before mounting:
tests/slurm/test_image_jobs.py.)
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pixi_deploy.store.remote_image as remote_image
from helpers.connections import CutReporter
from helpers.workspaces import CliResult
from pixi_deploy.pack import DownloadCache
from pixi_deploy.progress import RecordingReporter
from pixi_deploy.store.metadata import DeploymentMetadata
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import GeneratedBytes, PackageSpec, build_channel, lock_workspace
from pixi_deploy.transport import ConnectionLostError, SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("image_tools")]
#: Payload of the "bulk" package: zstd halves it, so the image is about 12 MB, big enough to
#: be cut in the middle of its upload.
BULK_BYTES = 24_000_000


@pytest.fixture
def base(test_cluster) -> str:
    return f"{test_cluster.base_path}/img-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def transport(ssh_settings: SSHSettings) -> Iterator[Transport]:
    with Transport(ssh_settings) as t:
        yield t


@pytest.fixture(params=[True, False], ids=["streamed-while-building", "uploaded-after"])
def streaming(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Both ways an image built here reaches the cluster (remote_image.STREAM_WHILE_BUILDING)."""
    monkeypatch.setattr(remote_image, "STREAM_WHILE_BUILDING", request.param)
    return bool(request.param)


def _workspace(where: Path, size: int) -> Path:
    """A workspace whose one package carries ``size`` bytes of realistic payload."""
    spec = PackageSpec(
        name="bulk",
        version="1",
        subdir="linux-64",
        files={"share/bulk.bin": GeneratedBytes(7, size), "bin/bulk": "#!/bin/sh\necho bulk\n"},
    )
    build_channel(where / "ch", [spec])
    lock_workspace(where / "ws", where / "ch", {"default": ["bulk"]}, ["linux-64"])
    return where / "ws"


def _sh(transport: Transport, script: str, *args: str) -> str:
    return transport.run_script(script, list(args)).stdout


def _images(transport: Transport, base: str) -> list[str]:
    return sorted(_sh(transport, 'ls -A "$1/images" 2>/dev/null || :', base).split())


def _check_whole(transport: Transport, image: DeploymentMetadata) -> None:
    """The published image is the recorded one, byte for byte, and a squashfs holding the
    environment (listed by unsquashfs on the cluster)."""
    assert image.image and image.image_sha256
    assert _sh(transport, 'sha256sum < "$1"', image.image).split()[0] == image.image_sha256
    assert int(_sh(transport, 'wc -c < "$1"', image.image)) == image.image_bytes
    recorded = json.loads(_sh(transport, 'cat "$1"', image.image[: -len(".sqfs")] + ".json"))
    assert recorded["image_sha256"] == image.image_sha256
    listing = _sh(transport, 'unsquashfs -l "$1"', image.image).split()
    assert {"squashfs-root/activate.sh", "squashfs-root/share/bulk.bin"} <= set(listing)


# -- a dropped connection -------------------------------------------------------------------


def test_a_connection_dropped_during_the_upload_sends_the_image_again(
    ssh_settings: SSHSettings, base: str, tmp_path: Path, streaming: bool
) -> None:
    ws = load_workspace(_workspace(tmp_path, BULK_BYTES))
    cache = DownloadCache(tmp_path / "cache")
    with Transport(ssh_settings) as t:
        # only this test's connection is cut: other users of the shared sshd keep theirs
        reporter = (
            CutReporter(t, after_bytes=2 << 20)  # the growing image: no total is known
            if streaming
            else CutReporter(t, after_fraction=1 / 3)
        )
        image = RemoteStore(t, base).deploy(ws, cache=cache, reporter=reporter, format="squashfs")
        assert reporter.cut and t.stats.reconnects >= 1
        assert not image.reused
        _check_whole(t, image)
        key = ws.resolve("default", "linux-64").short_hash
        # no staging copy of either attempt is left beside it
        assert _images(t, base) == [f"{key}.json", f"{key}.sqfs"]
    with Transport(ssh_settings) as t:  # a later deploy finds it whole and reuses it
        again = RemoteStore(t, base).deploy(ws, cache=cache, format="squashfs")
        assert again.reused and again.image_sha256 == image.image_sha256
        assert t.stats.bytes_uploaded == 0


class _AlwaysCut(CutReporter):
    """Cuts the connection in every upload: the retries run out."""

    def step(self, message: str) -> None:
        if "reconnecting" in message:
            self.cut = False  # cut the next attempt too


def test_a_connection_that_keeps_dropping_fails_with_one_line_and_publishes_nothing(
    ssh_settings: SSHSettings, base: str, tmp_path: Path
) -> None:
    ws = load_workspace(_workspace(tmp_path, BULK_BYTES))
    cache = DownloadCache(tmp_path / "cache")
    key = ws.resolve("default", "linux-64").short_hash
    with Transport(ssh_settings) as t:
        reporter = _AlwaysCut(t, after_bytes=1 << 20)
        with pytest.raises(ConnectionLostError) as raised:
            RemoteStore(t, base).deploy(ws, cache=cache, reporter=reporter, format="squashfs")
        message = str(raised.value)
        assert len(message.splitlines()) == 1 and raised.value.hint
        assert "dropped" in message and "nothing was published" in message, message
        published = [name for name in _images(t, base) if not name.startswith(".")]
        assert published == [], "a half-sent image must not be at its published name"
        assert _sh(t, 'ls -A "$1/envs" 2>/dev/null || :', base).split() == []
    with Transport(ssh_settings) as t:  # the next deploy works, and clears the partial copy
        image = RemoteStore(t, base).deploy(ws, cache=cache, format="squashfs")
        _check_whole(t, image)
        assert _images(t, base) == [f"{key}.json", f"{key}.sqfs"]


# -- a full disk on the cluster ------------------------------------------------------------


@pytest.fixture
def small_base(test_cluster, transport: Transport) -> Iterator[str]:
    """A deployment base on a 2 MB tmpfs: room for the store's folders, not for the image."""
    small = f"/home/{test_cluster.user}/small-{uuid.uuid4().hex[:6]}"
    os.makedirs(small)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0777", "tmpfs", small], check=True)
    try:
        yield f"{small}/store"
    finally:
        subprocess.run(["umount", "-l", small], check=False)
        os.rmdir(small)


def test_a_full_disk_on_the_cluster_is_one_line_and_publishes_nothing(
    ssh_env,
    small_base: str,
    tmp_path: Path,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    transport: Transport,
    streaming: bool,
) -> None:
    ws = _workspace(tmp_path, BULK_BYTES // 2)  # an image of about 6 MB
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", small_base)
    args = ["deploy", "--target", "ssh", "--manifest-path", ws, "--format", "squashfs"]
    result = cli(*args, "--cache-dir", tmp_path / "c")
    assert result.exit_code == 5, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == result.stderr.strip().splitlines()[-1:], result.stderr
    assert f"no space left under {small_base}" in errors[0]
    assert "free space or pick another SLURM_DEPLOYMENT_BASE_PATH" in errors[0]
    assert "Traceback" not in result.stderr
    # the cluster's refusal is read as such, not as a dropped connection to retry
    assert "reconnecting" not in result.stderr, result.stderr
    # nothing published, and no partial copy left to fill the disk
    assert _images(transport, small_base) == []
    assert _sh(transport, 'ls -A "$1/envs"', small_base).split() == []


# -- a corrupt image at the hash path ------------------------------------------------------

TAMPER = {
    # one changed byte in the middle: the size is right, the checksum is not
    "flipped-byte": 'size=$(wc -c < "$1"); printf X | dd of="$1" bs=1 seek=$((size / 2)) '
    "conv=notrunc 2>/dev/null",
    "truncated": 'size=$(wc -c < "$1"); truncate -s $((size / 3)) "$1"',
}


@pytest.mark.parametrize("how", sorted(TAMPER))
@pytest.mark.parametrize("where", ["built-here", "built-on-the-cluster"])
def test_a_corrupt_published_image_is_replaced_not_reused(
    transport: Transport, base: str, tmp_path: Path, how: str, where: str
) -> None:
    ws = load_workspace(_workspace(tmp_path, 2_000_000))
    cache = DownloadCache(tmp_path / "cache")
    store = RemoteStore(transport, base)
    if where == "built-on-the-cluster":  # the tree is there: the image is built from it
        store.deploy(ws, cache=cache)
    first = store.deploy(ws, cache=cache, format="squashfs")
    assert first.image
    _sh(transport, TAMPER[how], first.image)

    reporter = RecordingReporter()
    second = store.deploy(ws, cache=cache, reporter=reporter, format="squashfs")
    assert not second.reused, "a corrupt image must not be reused"
    assert any("is corrupt or truncated" in step for step in reporter.steps), reporter.steps
    _check_whole(transport, second)
    key = ws.resolve("default", "linux-64").short_hash
    assert _images(transport, base) == [f"{key}.json", f"{key}.sqfs"]
    third = store.deploy(ws, cache=cache, format="squashfs")  # whole again: reused
    assert third.reused and third.image_sha256 == second.image_sha256
