"""A real HTTP server on 127.0.0.1 serving a conda channel folder (optionally behind basic
auth), recording every request; and a lock rewritten to fetch from a URL of one's choice."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pixi_deploy.workspace import load_workspace

CONDA_FORGE = "https://conda.anaconda.org/conda-forge"


@dataclass
class Server:
    url: str
    root: Path
    auth: str | None = None  # expected Authorization header, None = open
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class _Handler(http.server.SimpleHTTPRequestHandler):
    server_state: Server

    def do_GET(self) -> None:
        state = self.server_state
        header = self.headers.get("Authorization")
        state.requests.append((self.path, header))
        if state.auth is not None and header != state.auth:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="channel"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serve_channel(channel: Path) -> Iterator[Server]:
    """Serve the folder ``channel`` until the block ends."""
    state = Server("", channel)
    handler = type("Handler", (_Handler,), {"server_state": state})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(channel))
    )
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def point_lock_at(workspace: Path, channel: Path, base_url: str) -> Path:
    """Rewrite every package URL of ``workspace``'s lock from the local ``channel`` folder to
    ``base_url`` (e.g. conda-forge's, served through a mirror). Returns the workspace."""
    lock = workspace / "pixi.lock"
    channel = channel.resolve()
    text = lock.read_text()
    text = text.replace(channel.as_uri(), base_url).replace(str(channel), base_url)
    lock.write_text(text)
    resolved = load_workspace(workspace).resolve("default", "linux-64")
    assert all(str(r.url).startswith(base_url + "/") for r in resolved.conda_records)
    return workspace
