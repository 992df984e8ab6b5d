"""Cutting one transport's SSH connection, as a network failure would, without touching the
other users of the shared test sshd."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from pixi_deploy.progress import NullReporter
from pixi_deploy.transport import Transport


def drop_connection(transport: Transport) -> list[int]:
    """SIGKILL the sshd processes serving exactly this transport's connection (found with
    ``ss`` by the server's port and this connection's local port)."""
    local_port = transport.local_port
    assert local_port is not None, "the transport is not connected"
    server_port = transport.settings.port or 22
    out = subprocess.run(
        [
            "ss", "-tnpH", "state", "established",
            f"( sport = :{server_port} and dport = :{local_port} )",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    pids = sorted({int(p) for p in re.findall(r"pid=(\d+)", out)})
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return pids


class CutReporter(NullReporter):
    """Cuts the connection once, when an upload has passed ``after_bytes`` (or, with
    ``after_fraction``, that part of the upload's announced total)."""

    def __init__(
        self, transport: Transport, after_bytes: int = 0, *, after_fraction: float | None = None
    ) -> None:
        self.transport = transport
        self.after_bytes = after_bytes
        self.after_fraction = after_fraction
        self.cut = False

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator:  # type: ignore[override]
        seen = [0]
        after = self.after_bytes
        if self.after_fraction is not None and total:
            after = int(total * self.after_fraction)

        def advance(n: int) -> None:
            seen[0] += n
            if description == "upload" and not self.cut and seen[0] > after:
                self.cut = True
                assert drop_connection(self.transport), "no sshd process found to kill"

        yield advance
