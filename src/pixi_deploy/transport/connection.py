"""The synchronous facade: one SSH connection per process, shared by every thread.

Callers (Typer CLI, Dagster resources) are synchronous and threaded, while asyncssh is
asyncio-based. A :class:`Transport` therefore owns a private event-loop thread that holds
the connection; each public method submits a coroutine to it and waits. Many threads may
call one Transport at the same time; their commands share the connection as channels.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from pixi_deploy import interrupts
from pixi_deploy.errors import ConfigError, TransportError

from . import quoting, upload
from .session import CommandResult, Session, TransportStats
from .settings import SSHSettings
from .streaming import StreamEnd, pump_lines

T = TypeVar("T")
LineCallback = Callable[[str], object]

_PLATFORMS = {
    ("Linux", "x86_64"): "linux-64",
    ("Linux", "amd64"): "linux-64",
    ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "arm64"): "linux-aarch64",
    ("Linux", "ppc64le"): "linux-ppc64le",
}


class Transport:
    """Commands, uploads and log streams over one lazily opened, self-healing connection."""

    def __init__(self, settings: SSHSettings, *, max_channels: int = 8) -> None:
        self.settings = settings
        self._session = Session(settings, max_channels=max_channels)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="pixi-deploy-ssh", daemon=True
        )
        self._thread.start()
        self._closed = False
        self._platform: str | None = None
        self._home: str | None = None

    # -- plumbing ---------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise TransportError("this SSH transport was closed", "call get_transport() again")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("Transport methods cannot be called from its own event loop")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    @property
    def stats(self) -> TransportStats:
        """A snapshot of the counters (connections opened, commands run, bytes uploaded)."""
        return replace(self._session.stats)

    @property
    def local_port(self) -> int | None:
        """The local TCP port of the open connection (None when none is open): what tells this
        connection apart from others to the same server, in ``ss`` or in the server's logs.
        A plain read, safe from any thread (progress callbacks run on the loop thread)."""
        return self._session.local_port

    def connect(self) -> None:
        """Open the connection now (it is otherwise opened by the first call)."""
        self._call(self._session.connection())

    def disconnect(self) -> None:
        """Close the connection but keep the transport usable (the next call reconnects)."""
        self._call(self._session.close())

    def close(self) -> None:
        """Close the connection and stop the loop thread; the transport is then unusable."""
        if self._closed:
            return
        with contextlib.suppress(Exception):  # closing a dead connection is not an error
            self._call(self._session.close())
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[quoting.Arg],
        *,
        input: bytes | str | None = None,
        check: bool = True,
        timeout: float | None = None,
        cwd: quoting.Arg | None = None,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv (each argument quoted, never re-parsed) and collect its output.

        Raises RemoteCommandError (a TransportError) on non-zero exit when ``check``.
        """
        data = input.encode() if isinstance(input, str) else input
        return self._call(self._session.run(argv, data, check, timeout, cwd, env))

    def run_script(
        self,
        script: str,
        args: Sequence[quoting.Arg] = (),
        **kwargs: Any,
    ) -> CommandResult:
        """Run a POSIX sh script (``sh -c``); ``args`` arrive as ``"$1" "$2" ...``."""
        return self.run(quoting.sh_c(script, args), **kwargs)

    def iter_lines(
        self,
        argv: Sequence[quoting.Arg],
        *,
        cwd: quoting.Arg | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LineStream:
        """Follow a command's output as ``(stream, line)`` pairs; close() to cancel."""
        return LineStream(self, argv, cwd, env)

    def stream(
        self,
        argv: Sequence[quoting.Arg],
        on_stdout_line: LineCallback,
        on_stderr_line: LineCallback | None = None,
        *,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        cwd: quoting.Arg | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int | None:
        """Call back for each output line (in this thread) until the program exits, ``stop``
        is set or ``timeout`` passes; returns the exit status, or None when stopped."""
        with self.iter_lines(argv, cwd=cwd, env=env) as lines:
            for name, line in lines.follow(stop=stop, timeout=timeout):
                callback = on_stdout_line if name == "stdout" else on_stderr_line
                if callback is not None:
                    callback(line)
            return lines.exit_status

    def pipe(
        self, argv: Sequence[quoting.Arg], produce: Callable[[Callable[[bytes], None]], None]
    ) -> CommandResult:
        """Run argv and stream into its stdin: ``produce(write)`` calls ``write(chunk)``, which
        blocks while the channel is full. Like ``producer | ssh host argv``, without a local
        temporary file; the result carries the exit status and output (check it yourself)."""
        process = self._call(self._session.start_piped(argv))

        def write(data: bytes) -> None:
            if data:
                self._call(self._session.write_piped(process, data))
                self._session.stats.bytes_uploaded += len(data)

        try:
            produce(write)
        except BaseException:
            self._call(self._session.finish_piped(process, argv, abort=True))
            raise
        return self._call(self._session.finish_piped(process, argv, abort=False))

    # -- files ----------------------------------------------------------------------------
    def upload(
        self,
        local_path: str | os.PathLike[str],
        remote_path: str,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Copy a file via SFTP to ``remote_path`` (parents created), resuming after drops,
        verified by size and sha256, and renamed into place atomically."""
        local = Path(local_path)
        digest = upload.sha256_file(local)
        self._call(upload.upload(self._session, local, remote_path, digest, progress))

    def put_bytes(self, data: bytes, remote_path: str) -> None:
        """Write a small file atomically (temporary name, then rename)."""
        self._call(upload.put_bytes(self._session, data, remote_path))

    def read_bytes(self, remote_path: str) -> bytes:
        """Read a whole remote file; RemoteFileNotFoundError if it does not exist."""
        return self._call(upload.read_bytes(self._session, remote_path))

    def exists(self, remote_path: str) -> bool:
        return self._call(upload.exists(self._session, remote_path))

    # -- facts about the edge node ------------------------------------------------------
    def platform(self) -> str:
        """The conda platform of the edge node, from ``uname -sm`` (cached)."""
        if self._platform is None:
            out = self.run(["uname", "-sm"]).stdout.split()
            key = (out[0], out[1]) if len(out) == 2 else ("", "")
            if key not in _PLATFORMS:
                raise ConfigError(
                    f"the edge node reports `{' '.join(out)}`, which pixi-deploy cannot target",
                    "use a linux-64, linux-aarch64 or linux-ppc64le cluster",
                )
            self._platform = _PLATFORMS[key]
        return self._platform

    def home(self) -> str:
        """The login user's home directory on the edge node (cached)."""
        if self._home is None:
            self._home = self.run(["sh", "-c", 'printf %s "$HOME"']).stdout
        return self._home

    def expand_path(self, remote_path: str) -> str:
        """Expand a leading ``~`` (SFTP and quoted arguments never do)."""
        if remote_path == "~" or remote_path.startswith("~/"):
            return self.home() + remote_path[1:]
        return remote_path

    @property
    def base_path(self) -> str | None:
        """SLURM_DEPLOYMENT_BASE_PATH with ``~`` expanded, or None if unset."""
        base = self.settings.base_path
        return self.expand_path(base) if base else None


class LineStream:
    """Iterator over a remote command's output lines; a context manager that cancels."""

    def __init__(
        self,
        transport: Transport,
        argv: Sequence[quoting.Arg],
        cwd: quoting.Arg | None,
        env: Mapping[str, str] | None,
    ) -> None:
        self._transport = transport
        self._queue: queue.Queue[tuple[str, str] | StreamEnd] = queue.Queue()
        self._cancel = asyncio.Event()
        self.exit_status: int | None = None
        self._future = asyncio.run_coroutine_threadsafe(
            pump_lines(transport._session, argv, self._queue, self._cancel, cwd, env),
            transport._loop,
        )
        self._ended = False

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return self.follow()

    def follow(
        self, stop: threading.Event | None = None, timeout: float | None = None
    ) -> Iterator[tuple[str, str]]:
        """Yield lines until the end; ``stop``/``timeout`` cancel the remote program."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ended:
            interrupts.raise_if_interrupted()
            if (stop is not None and stop.is_set()) or (
                deadline is not None and time.monotonic() >= deadline
            ):
                self.close()
                return
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if isinstance(item, StreamEnd):
                self._ended = True
                self.exit_status = item.exit_status
                if item.error is not None:
                    raise item.error
                return
            yield item

    def close(self) -> None:
        """Stop the remote program (if still running) and wait for the channel to close."""
        if not self._future.done():
            self._transport._loop.call_soon_threadsafe(self._cancel.set)
            with contextlib.suppress(Exception):  # we are tearing down anyway
                self._future.result(10)
        self._ended = True

    def __enter__(self) -> LineStream:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


_registry: dict[SSHSettings, Transport] = {}
_registry_lock = threading.Lock()


def get_transport(settings: SSHSettings | None = None) -> Transport:
    """The process-wide Transport for these settings (from the environment if None)."""
    settings = settings if settings is not None else SSHSettings.from_env()
    with _registry_lock:
        transport = _registry.get(settings)
        if transport is None or transport._closed:
            transport = _registry[settings] = Transport(settings)
        return transport


@atexit.register
def close_all() -> None:
    """Close every shared transport (runs at interpreter exit)."""
    with _registry_lock:
        transports = list(_registry.values())
        _registry.clear()
    for transport in transports:
        transport.close()
