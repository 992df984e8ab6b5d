"""The streamed unpack as a column of the hostile matrix: a pack fed to ``unpack - DIR`` through
a real pipe on standard input, or served to ``unpack URL DIR`` by a real HTTP server on
127.0.0.1 (`pack.sources`, `pack.streamed`). Both run the CLI in this process, as the other
columns do, so the guard sees everything they write."""

from __future__ import annotations

import functools
import http.server
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from helpers.workspaces import CliResult

#: How a pack reaches `unpack`: its file, standard input, or an http:// download.
SOURCES = ["file", "stdin", "http"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` serving ``folder`` (read only) until the block ends."""
    handler = functools.partial(_Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(60)


@contextmanager
def piped_stdin(data: bytes) -> Iterator[None]:
    """``sys.stdin`` is the read end of a pipe that a thread fills with ``data`` (then closes):
    what ``cat pack | pixi-deploy unpack - DIR`` gives the CLI. An unpack that refuses early
    stops reading; the writer then gets a broken pipe, as ``cat`` would."""
    read_fd, write_fd = os.pipe()
    reader = io.TextIOWrapper(io.BufferedReader(io.FileIO(read_fd, "rb")))

    def feed() -> None:
        with suppress(BrokenPipeError, OSError), os.fdopen(write_fd, "wb") as out:
            for start in range(0, len(data), 1 << 16):
                out.write(data[start : start + (1 << 16)])

    feeder = threading.Thread(target=feed, daemon=True)
    saved = sys.stdin
    sys.stdin = reader
    feeder.start()
    try:
        yield
    finally:
        sys.stdin = saved
        reader.close()  # a writer still blocked on a full pipe gets EPIPE now
        feeder.join(60)
        assert not feeder.is_alive(), "the pipe's writer did not end"


def unpack_from(
    source: str, cli: Callable[..., CliResult], pack: Path, target: Path, *args: str | Path
) -> CliResult:
    """``pixi-deploy unpack`` of ``pack`` into ``target``, the pack read from ``source``."""
    if source == "stdin":
        with piped_stdin(pack.read_bytes()):
            return cli("unpack", "-", target, *args)
    if source == "http":
        with serve(pack.parent) as url:
            return cli("unpack", f"{url}/{pack.name}", target, *args)
    return cli("unpack", pack, target, *args)
