"""The asynchronous core that lives on the transport's event-loop thread.

It owns the single asyncssh connection and its SFTP channel, reconnects when the
connection has gone away, and limits concurrent channels below sshd's MaxSessions (10 by
default) so that many Dagster threads sharing one connection do not get refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncssh

from pixi_deploy.errors import TransportError

from . import quoting
from .connect import open_connection
from .failures import LOST, ConnectionLostError, PermanentConnectError, RemoteCommandError, one_line
from .settings import SSHSettings

log = logging.getLogger("pixi_deploy.transport")
T = TypeVar("T")


@dataclass
class TransportStats:
    """Counters for tests and benchmarks (updated on the loop thread only)."""

    connections_opened: int = 0
    commands_run: int = 0
    bytes_uploaded: int = 0
    reconnects: int = 0
    upload_resumes: int = 0
    channel_refusals: int = 0


@dataclass(frozen=True)
class CommandResult:
    """What a remote command produced; ``stdout``/``stderr`` are UTF-8 text."""

    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(default=b"", repr=False)

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


async def close_channel(process: asyncssh.SSHClientProcess[bytes]) -> None:
    """Close and wait until the server has closed it too: sshd counts a channel against
    MaxSessions until then, so releasing our slot earlier gets new channels refused."""
    process.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(process.wait_closed(), 0.5)


class _NotStarted(Exception):
    """The channel could not be opened because the connection was gone: safe to retry."""


class Session:
    """One connection, reopened on demand; all methods run on the loop thread."""

    def __init__(self, settings: SSHSettings, max_channels: int = 8) -> None:
        self.settings = settings
        self.stats = TransportStats()
        self.reconnect_delays: Sequence[float] = (0.5, 1.5, 4.0)
        # sshd frees a session slot a moment after it has closed the channel (it waits for
        # the command's process to be reaped), so a burst of commands can briefly exceed
        # MaxSessions even below our own channel limit; such a refusal means the command
        # never started, which makes waiting and asking again safe.
        self.refusal_delays: Sequence[float] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()
        self._channels = asyncio.Semaphore(max_channels)
        self._ever_connected = False

    @property
    def where(self) -> str:
        return self.settings.destination

    @property
    def local_port(self) -> int | None:
        """The local TCP port of the open connection; None when none is open."""
        conn = self._conn
        if conn is None or conn.is_closed():
            return None
        sockname = conn.get_extra_info("sockname")
        return int(sockname[1]) if sockname else None

    def _lost(self) -> None:
        """Forget the connection and its SFTP channel (a closed one is noticed by
        ``is_closed()`` in :meth:`connection`)."""
        self._conn = None
        self._sftp = None

    async def connection(self) -> asyncssh.SSHClientConnection:
        """The live connection, opened or reopened if needed."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return self._conn
            self._lost()
            reconnect = self._ever_connected
            delays = [0.0, *self.reconnect_delays] if reconnect else [0.0]
            for attempt, delay in enumerate(delays):
                await asyncio.sleep(delay)
                try:
                    conn = await open_connection(self.settings)
                except PermanentConnectError:
                    raise
                except TransportError:
                    if attempt == len(delays) - 1:
                        raise
                    log.info("reconnect to %s failed; retrying in %ss", self.where, delays[1])
                    continue
                self._conn = conn
                self._ever_connected = True
                self.stats.connections_opened += 1
                self.stats.reconnects += int(reconnect)
                return conn
        raise AssertionError("unreachable")

    def drop(self) -> None:
        """Forget (and close) the current connection so the next call reconnects."""
        conn = self._conn
        self._lost()
        if conn is not None:
            conn.close()

    async def sftp(self) -> asyncssh.SFTPClient:
        """The connection's SFTP client (one channel, opened lazily and kept)."""
        conn = await self.connection()
        if self._sftp is None:
            try:
                self._sftp = await conn.start_sftp_client()
            except LOST as exc:
                self.drop()
                raise _NotStarted() from exc
        return self._sftp

    async def retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``; if it could not even start because the connection was gone, reconnect
        and try once more."""
        try:
            return await op()
        except _NotStarted:
            self.drop()
            return await op()

    def uses_pty(self, stdin_devnull: bool) -> bool:
        """force_tty gives a pseudo-terminal to commands that read no input: a terminal would
        mangle data sent on stdin (uploads, the stream watchdog), so those never get one."""
        return self.settings.force_tty and stdin_devnull

    async def start_process(
        self, command: str, stdin_devnull: bool
    ) -> asyncssh.SSHClientProcess[bytes]:
        command = quoting.after_login(command, self.settings.post_login_command)
        pty: dict[str, object] = {}
        if self.uses_pty(stdin_devnull):
            pty = {"term_type": "dumb", "request_pty": "force"}
        for delay in (*self.refusal_delays, None):
            conn = await self.connection()
            try:
                process = await conn.create_process(
                    command,
                    encoding=None,
                    stdin=asyncssh.DEVNULL if stdin_devnull else asyncssh.PIPE,
                    **pty,
                )
            except LOST as exc:
                self.drop()
                raise _NotStarted() from exc
            except asyncssh.ChannelOpenError as exc:
                if conn.is_closed():
                    self.drop()
                    raise _NotStarted() from exc
                if delay is None:
                    raise TransportError(
                        f"{self.where} refused a new SSH channel: {one_line(exc.reason)}",
                        "lower the number of parallel commands or raise MaxSessions in sshd_config",
                    ) from None
                self.stats.channel_refusals += 1
                await asyncio.sleep(delay)
                continue
            self.stats.commands_run += 1
            return process
        raise AssertionError("unreachable")

    async def run(
        self,
        argv: Sequence[quoting.Arg],
        input: bytes | None,
        check: bool,
        timeout: float | None,
        cwd: quoting.Arg | None,
        env: Mapping[str, str] | None,
    ) -> CommandResult:
        command = quoting.command_line(argv, cwd=cwd, env=env)
        shown = tuple(str(a) for a in argv)
        async with self._channels:
            process = await self.retrying(lambda: self.start_process(command, not input))
            try:
                out, err = await asyncio.wait_for(_communicate(process, input), timeout)
            except TimeoutError:
                process.close()
                raise TransportError(
                    f"remote command {describe(shown)} did not finish within {timeout:g}s",
                    "it was stopped; raise the timeout if it needs longer",
                ) from None
            except LOST as exc:
                self.drop()
                raise ConnectionLostError(
                    f"the SSH connection to {self.where} was lost while running {describe(shown)}",
                    "the command may or may not have completed; check and retry",
                ) from exc
            finally:
                await close_channel(process)
        status = process.exit_status
        if status is None or (status < 0 and process.exit_signal is None):
            self.drop()
            raise ConnectionLostError(
                f"the SSH connection to {self.where} was lost while running {describe(shown)}",
                "the command may or may not have completed; check and retry",
            )
        if status < 0:  # killed by a signal, like a shell reports it
            status = 128 + 15
        if self.uses_pty(not input) and isinstance(out, bytes):  # a terminal ends lines "\r\n"
            out = out.replace(b"\r\n", b"\n")
        result = CommandResult(
            argv=shown,
            exit_status=status,
            stdout=_text(out),
            stderr=_text(err),
            stdout_bytes=out or b"",
        )
        if check and status != 0:
            tail = one_line(result.stderr.strip().splitlines()[-1]) if result.stderr.strip() else ""
            raise RemoteCommandError(
                f"remote command {describe(shown)} exited with status {status}"
                + (f": {tail}" if tail else ""),
                None,
                status,
                result.stderr,
            )
        return result

    async def start_piped(self, argv: Sequence[quoting.Arg]) -> asyncssh.SSHClientProcess[bytes]:
        """Start argv with a writable stdin; the caller streams into it (see Transport.pipe)."""
        await self._channels.acquire()
        try:
            return await self.retrying(
                lambda: self.start_process(quoting.command_line(argv), False)
            )
        except BaseException:
            self._channels.release()
            raise

    async def write_piped(self, process: asyncssh.SSHClientProcess[bytes], data: bytes) -> None:
        try:
            process.stdin.write(data)
            await process.stdin.drain()
        except LOST as exc:
            self.drop()
            raise ConnectionLostError(
                f"the SSH connection to {self.where} was lost while sending data",
                "run the command again; completed parts are kept",
            ) from exc

    async def finish_piped(
        self, process: asyncssh.SSHClientProcess[bytes], argv: Sequence[quoting.Arg], abort: bool
    ) -> CommandResult:
        shown = tuple(str(a) for a in argv)
        try:
            if abort:
                process.close()
                return CommandResult(
                    argv=shown, exit_status=130, stdout="", stderr="", stdout_bytes=b""
                )
            process.stdin.write_eof()
            out, err = await process.communicate()
        except LOST as exc:
            self.drop()
            raise ConnectionLostError(
                f"the SSH connection to {self.where} was lost while running {describe(shown)}",
                "run the command again; completed parts are kept",
            ) from exc
        finally:
            await close_channel(process)
            self._channels.release()
        status = process.exit_status
        if status is None or status < 0:
            self.drop()
            raise ConnectionLostError(
                f"the SSH connection to {self.where} was lost while running {describe(shown)}",
                "run the command again; completed parts are kept",
            )
        return CommandResult(
            argv=shown,
            exit_status=status,
            stdout=_text(out),
            stderr=_text(err),
            stdout_bytes=out or b"",
        )

    async def close(self) -> None:
        conn = self._conn
        self._lost()
        if conn is not None:
            conn.close()
            await conn.wait_closed()


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    if isinstance(data, str):
        return data
    return data.decode("utf-8", "replace")


def describe(argv: Sequence[str], limit: int = 80) -> str:
    """A short, printable form of a command for error messages."""
    text = one_line(" ".join(argv), limit)
    return f"`{text}`"


async def _communicate(
    process: asyncssh.SSHClientProcess[bytes], input: bytes | None
) -> tuple[bytes, bytes]:
    """``process.communicate(input)``, except that a program that exits (or closes its stdin)
    before reading all of its input is reported by its exit status and output, as ``ssh``
    reports it, not as a broken pipe: a script that refuses early (exit 96, "the code snapshot
    is missing") does so before it reads the bundle sent to it."""
    try:
        return await process.communicate(input)
    except BrokenPipeError:
        await process.wait_closed()
        return process.collect_output()
