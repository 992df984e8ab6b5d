"""Credentials in a lock's URLs (issue 13.9) stay in memory, for the download: none of them
reaches a pack, its embedded lock, conda-meta, a deployment, an installer, an image layer,
`inspect --json`, or an error message.

The lock is rewritten to name an authenticated channel (user:password, a ``/t/<token>/`` path
and a ``?token=`` query); the download cache is filled beforehand from the real local channel
(it is keyed by sha256), so nothing is fetched.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from helpers.workspaces import CliResult
from pixi_deploy.testing.channel import make_demo_workspace

SECRETS = (b"s3cretpw", b"tok3n-abc", b"qt0ken", b"alice")
AUTHENTICATED = "https://alice:s3cretpw@127.0.0.1:9/t/tok3n-abc/chan"


@pytest.fixture(scope="module")
def secret_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(workspace, filled cache)."""
    root = tmp_path_factory.mktemp("secret")
    ws = make_demo_workspace(root / "demo", platforms=("linux-64",))
    from pixi_deploy.pack import DownloadCache, write_pack
    from pixi_deploy.workspace import load_workspace

    cache = root / "cache"
    write_pack(
        load_workspace(ws).resolve("default", "linux-64"),
        root / "fill.tar",
        cache=DownloadCache(cache),
    )
    channel = (root / "demo" / "channel").as_posix()
    lines = []
    for line in (ws / "pixi.lock").read_text().splitlines():
        line = line.replace(f"file://{channel}", AUTHENTICATED).replace(channel, AUTHENTICATED)
        if line.strip().startswith("- conda:") and line.endswith(".conda"):
            line += "?token=qt0ken"
        lines.append(line)
    (ws / "pixi.lock").write_text("\n".join(lines) + "\n")
    return ws, cache


def _leaks(data: bytes) -> list[bytes]:
    return [s for s in SECRETS if s in data]


def _bytes_of(path: Path) -> bytes:
    """A file's bytes, decompressed when it is zstd or gzip (pack, image layers)."""
    data = path.read_bytes()
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    if data[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(data)
        except (OSError, zlib.error):
            return data
    return data


def _tree_leaks(root: Path) -> dict[str, list[bytes]]:
    found = {}
    paths = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    for path in paths:
        if path.is_symlink():
            continue
        leaks = _leaks(_bytes_of(path))
        if leaks:
            found[str(path)] = leaks
    return found


@pytest.mark.parametrize(
    "what", ["pack", "pack-zstd", "unpacked", "deploy-local", "self-extracting", "image", "inspect"]
)
def test_no_credential_is_written_or_printed(
    what: str, secret_ws: tuple[Path, Path], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    ws, cache = secret_ws
    common = ["--manifest-path", ws, "-p", "linux-64", "--cache-dir", cache]
    outputs: list[Path] = []
    if what in ("pack", "pack-zstd", "unpacked"):
        pack = tmp_path / ("p.tar.zst" if what == "pack-zstd" else "p.tar")
        result = cli("pack", *common, "-o", pack, *(["--compress"] if what == "pack-zstd" else []))
        outputs.append(pack)
        if what == "unpacked":
            assert result.exit_code == 0, result.stderr
            result = cli("unpack", pack, tmp_path / "env", "--json")
            outputs.append(tmp_path / "env")
    elif what == "deploy-local":
        meta = tmp_path / "deployment_metadata.json"
        result = cli(
            "deploy", *common, "--base", tmp_path / "base", "--metadata-out", meta, "--json"
        )
        outputs += [tmp_path / "base", meta]
    elif what == "self-extracting":
        result = cli("pack", "--self-extracting", *common, "-o", tmp_path / "env.sh", "--json")
        outputs.append(tmp_path / "env.sh")
    elif what == "image":
        result = cli(
            "image",
            *common,
            "--base",
            "scratch",
            "--tag",
            "localhost/s:1",
            "--dest",
            tmp_path / "i.oci",
        )
        outputs.append(tmp_path / "i.oci")
    else:
        result = cli("inspect", "--manifest-path", ws, "--json")
        assert "127.0.0.1:9/t/***/chan" in result.stdout  # the channel is still named
    assert result.exit_code == 0, result.stderr
    assert not _leaks((result.stdout + result.stderr).encode())
    for output in outputs:
        assert output.exists(), output
        assert _tree_leaks(output) == {}


def test_no_credential_in_an_error_message(
    secret_ws: tuple[Path, Path], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """A package missing from the cache: the download fails (nothing listens on port 9)."""
    ws, _ = secret_ws
    result = cli("pack", "--manifest-path", ws, "-p", "linux-64", "--cache-dir", tmp_path / "c")
    assert result.exit_code == 4, result.stderr
    assert "127.0.0.1:9" in result.stderr and not _leaks(result.stderr.encode())
