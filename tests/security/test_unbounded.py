"""Reads are bounded by the lock's ``size`` (issue 13.8): a ``file://`` entry that is a symlink to
/dev/zero, a FIFO, and an HTTP server that never stops sending all end in a one-line error,
with nothing left in the cache. No timing is asserted: without the bound, these tests would
never finish (pytest's timeout would fail them)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from helpers.workspaces import CliResult


def _pack(ws: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> CliResult:
    cache = tmp_path / "cache"
    result = cli(
        "pack",
        "--manifest-path",
        ws,
        "-p",
        "linux-64",
        "--cache-dir",
        cache,
        "-o",
        tmp_path / "p.tar",
    )
    assert not (tmp_path / "p.tar").exists()
    assert not list(cache.rglob("greet-1*")) and not list(cache.rglob(".part-*")), "kept"
    return result


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_a_channel_file_that_never_ends_is_refused(
    kind: str, fresh_demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    archive = next((fresh_demo_ws.parent / "channel" / "linux-64").glob("greet-1*.conda"))
    archive.unlink()
    if kind == "dev-zero":
        archive.symlink_to("/dev/zero")
    else:
        os.mkfifo(archive)
    result = _pack(fresh_demo_ws, tmp_path, cli)
    assert result.exit_code == 4, result.stderr
    assert "is not a regular file" in result.stderr
    assert len([x for x in result.stderr.splitlines() if x.startswith("error:")]) == 1


def test_a_regular_file_larger_than_locked_stops_at_the_size(
    fresh_demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    archive = next((fresh_demo_ws.parent / "channel" / "linux-64").glob("greet-1*.conda"))
    with archive.open("ab") as out:
        out.truncate(archive.stat().st_size + (1 << 30))  # 1 GB more, sparse
    result = _pack(fresh_demo_ws, tmp_path, cli)
    assert result.exit_code == 4 and "larger than the" in result.stderr, result.stderr


class _Endless(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()  # no Content-Length: the body ends when the server closes
        chunk = b"\0" * (1 << 16)
        try:
            while True:
                self.wfile.write(chunk)
        except OSError:
            return

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def endless() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Endless)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_an_http_channel_that_never_stops_sending_is_cut_off(
    endless: str, fresh_demo_ws: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    lock = fresh_demo_ws / "pixi.lock"
    channel = (fresh_demo_ws.parent / "channel").as_posix()
    text = (
        lock.read_text()
        .replace(f"file://{channel}", f"{endless}/ch")
        .replace(channel, f"{endless}/ch")
    )
    lock.write_text(text)
    result = _pack(fresh_demo_ws, tmp_path, cli)
    assert result.exit_code == 4, result.stderr
    assert "larger than the" in result.stderr and "bytes locked" in result.stderr
