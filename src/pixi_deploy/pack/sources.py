"""Where `unpack` reads a pack from: a file, standard input (``-``), or a URL (``https://``,
``http://``, ``file://``).

A file is read with random access (`pack.unpack`); standard input and downloads are streams,
read once (`pack.streamed`), so that ``curl ... | pixi-deploy unpack - DIR`` and a batch job
unpacking straight from a web server need no room for the pack. Downloads use the standard
library (``urllib``): one GET, followed redirects, no retries (a cut download is refused, never
resumed into a mixed pack). Credentials in a URL never reach a message (`channels.redact`).
"""

from __future__ import annotations

import http.client
import io
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

from pixi_deploy.channels import redact
from pixi_deploy.errors import PackError

STDIN = "-"
STDIN_LABEL = "the pack on standard input"
#: Seconds a download may stall (no byte at all) before it is given up.
TIMEOUT = 120
_STREAMED_SCHEMES = ("http", "https")


def is_stream(where: str) -> bool:
    """Whether ``where`` names a stream (standard input, an http(s) URL) rather than a file."""
    return where == STDIN or urllib.parse.urlsplit(where).scheme in _STREAMED_SCHEMES


def local_path(where: str) -> Path:
    """A file path, or the path a ``file://`` URL names (on this machine only)."""
    parts = urllib.parse.urlsplit(where)
    if parts.scheme != "file":
        if parts.scheme and len(parts.scheme) > 1 and "://" in where:
            raise PackError(
                f"cannot unpack from a {parts.scheme}:// URL",
                "use https://, http://, file://, a file path, or - for standard input",
            )
        return Path(where)
    if parts.netloc not in ("", "localhost"):
        raise PackError(
            f"{redact(where)} names a file on another machine ({parts.netloc})",
            "copy it here, or serve it over https://",
        )
    return Path(urllib.request.url2pathname(parts.path))


@contextmanager
def open_stream(where: str) -> Iterator[tuple[BinaryIO, str]]:
    """The stream ``where`` names, and how messages name it."""
    if where == STDIN:
        stdin = sys.stdin.buffer
        if stdin.isatty():
            raise PackError(
                "standard input is a terminal, not a pack",
                "pipe a pack into it, e.g. curl -fsSL URL | pixi-deploy unpack - DIR",
            )
        yield stdin, STDIN_LABEL
        return
    label = redact(where)
    try:
        response = urllib.request.urlopen(where, timeout=TIMEOUT)  # noqa: S310 (http(s) only)
    except urllib.error.HTTPError as error:
        raise PackError(
            f"{label} answered HTTP {error.code} ({error.reason})", "check the URL"
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = getattr(error, "reason", error)
        raise PackError(
            f"cannot download {label} ({reason})", "check the URL and the network"
        ) from None
    with response:
        yield cast(BinaryIO, _Download(response, label)), label


class _Download(io.RawIOBase):
    """A response body whose read errors (a reset connection, a stalled server, a broken chunk)
    are a one-line `PackError` naming the download, not a traceback."""

    def __init__(self, response: Any, label: str) -> None:
        self.response, self.label = response, label

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.response.read(len(buffer))
        except (OSError, http.client.HTTPException) as error:
            raise PackError(
                f"the download of {self.label} failed ({type(error).__name__}: {error})",
                "try again; nothing was installed",
            ) from None
        buffer[: len(data)] = data
        return len(data)
