"""Unpack from a stream (issue 18): standard input through a real pipe, and a real HTTP server
on 127.0.0.1; plain and zstd packs; a cut stream, a corrupted byte and a stream that is not a
pack each leave nothing at the target and get a one-line error."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.reference import compare_trees, same_length_path
from pixi_deploy import api
from pixi_deploy.errors import PackError
from pixi_deploy.pack import DownloadCache, pack_digest, unpack, write_pack
from pixi_deploy.workspace import load_workspace

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module", params=["none", "zstd"])
def pack(
    request: pytest.FixtureRequest,
    demo_ws: Path,
    cache: DownloadCache,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    resolved = load_workspace(demo_ws).resolve("extra", "linux-64")
    suffix = ".tar.zst" if request.param == "zstd" else ".tar"
    out = tmp_path_factory.mktemp("packs") / f"extra{suffix}"
    return write_pack(resolved, out, compression=request.param, cache=cache).path


def _cli_from_stdin(data: bytes, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """``pixi-deploy unpack - ...`` in a new process, its standard input a pipe we feed."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    code = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "unpack", "-", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    stdin = process.stdin
    assert stdin is not None

    def feed() -> None:
        try:
            for start in range(0, len(data), 1 << 16):
                stdin.write(data[start : start + (1 << 16)])
            stdin.close()
        except (BrokenPipeError, ValueError):  # it stopped reading (a refused pack): fine
            pass

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    assert process.stdout is not None and process.stderr is not None
    out, err = process.stdout.read(), process.stderr.read()
    process.wait(timeout=600)
    feeder.join(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, out.decode(), err.decode())


def _check_like_file_unpack(pack: Path, streamed: Path, tmp_path: Path) -> None:
    """The streamed environment is the one a file unpack makes, file for file."""
    reference = same_length_path(tmp_path, len(str(streamed)))
    unpack(pack, reference)
    assert compare_trees(streamed, reference) == []
    run = subprocess.run(
        ["bash", "-c", f'. "{streamed}/activate.sh" && greet-extra'],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# -- standard input ------------------------------------------------------------------------------


def test_unpack_from_stdin(pack: Path, tmp_path: Path) -> None:
    target = tmp_path / "env"
    digest = pack_digest(pack)
    run = _cli_from_stdin(pack.read_bytes(), target, "--expect-digest", digest, "--json")
    assert run.returncode == 0, run.stderr
    assert digest in run.stdout
    _check_like_file_unpack(pack, target, tmp_path)
    # nothing left beside it: no pack copy, no work folder
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("ref")) == ["env"]


def test_stdin_with_the_wrong_digest_is_refused_before_anything(pack: Path, tmp_path: Path) -> None:
    run = _cli_from_stdin(pack.read_bytes(), tmp_path / "env", "--expect-digest", "0" * 64)
    assert run.returncode == 3
    assert "not the expected" in _one_line_error(run.stderr)
    assert list(tmp_path.iterdir()) == []


def _member(pack_plain: Path, prefix: str) -> tarfile.TarInfo:
    with tarfile.open(pack_plain) as tar:
        return next(m for m in tar.getmembers() if m.name.startswith(prefix))


def _damaged(pack: Path, how: str) -> bytes:
    data = bytearray(pack.read_bytes())
    if how == "cut":
        return bytes(data[: len(data) // 2])
    if how == "cut-at-end":
        return bytes(data[:-700])
    if how == "byte":
        if pack.suffix == ".tar":  # in the middle of an archive: its sha256 catches it
            member = _member(pack, "conda/")
            data[member.offset_data + member.size // 2] ^= 0x01
        else:  # in the compressed stream: zstd's checksum or the archive's sha256 catches it
            data[len(data) // 2] ^= 0x01
        return bytes(data)
    if how == "not-a-pack":
        return b"this is not a pack\n" * 5000
    if how == "empty":
        return b""
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["cut", "cut-at-end", "byte", "not-a-pack", "empty"])
def test_bad_stdin_leaves_nothing(pack: Path, tmp_path: Path, how: str) -> None:
    run = _cli_from_stdin(_damaged(pack, how), tmp_path / "deep" / "env")
    assert run.returncode != 0
    line = _one_line_error(run.stderr)
    expected = {
        "cut": "truncated|corrupt",
        "cut-at-end": "truncated|corrupt|fewer",
        "byte": "corrupt|sha256|truncated",
        "not-a-pack": "not a pixi-deploy pack|corrupt",
        "empty": "not a pixi-deploy pack|truncated|corrupt",
    }[how]
    assert re.search(expected, line), line
    assert list(tmp_path.iterdir()) == []  # not even the parent folder it made


# -- HTTP ----------------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    cut_at: int | None = None  # send the full Content-Length, then close after this many bytes

    def do_GET(self) -> None:
        if self.cut_at is None:
            super().do_GET()
            return
        path = Path(self.translate_path(self.path))
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: self.cut_at])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _serve(folder: Path, cut_at: int | None = None) -> Iterator[str]:
    handler = type("Handler", (_Handler,), {"cut_at": cut_at})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
    )
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unpack_from_http(pack: Path, tmp_path: Path, cli) -> None:
    target = tmp_path / "env"
    with _serve(pack.parent) as url:
        result = cli("unpack", f"{url}/{pack.name}", target, "--expect-digest", pack_digest(pack))
    assert result.exit_code == 0, result.stderr
    _check_like_file_unpack(pack, target, tmp_path)


def test_unpack_from_file_url(pack: Path, tmp_path: Path) -> None:
    result = api.unpack(pack.as_uri(), tmp_path / "env")
    assert result.digest == pack_digest(pack)
    assert (tmp_path / "env" / "activate.sh").is_file()


def test_cut_http_download_leaves_nothing(pack: Path, tmp_path: Path, cli) -> None:
    with _serve(pack.parent, cut_at=pack.stat().st_size // 2) as url:
        result = cli("unpack", f"{url}/{pack.name}", tmp_path / "env")
    assert result.exit_code != 0
    assert "truncated" in _one_line_error(result.stderr) or "download" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_http_errors_are_one_line(pack: Path, tmp_path: Path, cli) -> None:
    with _serve(pack.parent) as url:
        result = cli("unpack", f"{url}/missing.tar", tmp_path / "env")
    assert result.exit_code != 0
    assert "HTTP 404" in _one_line_error(result.stderr)
    result = cli("unpack", "http://127.0.0.1:9/x.tar", tmp_path / "env")  # nothing listens
    assert result.exit_code != 0 and "cannot download" in _one_line_error(result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_unknown_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackError, match="ftp://"):
        api.unpack("ftp://example.org/x.tar", tmp_path / "env")
