"""Following remote output live (``tail -F`` of a Slurm log) with clean cancellation.

The remote program runs under :func:`quoting.with_watchdog`, so closing our end of its
stdin — on cancel, or when the connection dies — kills it on the edge node as well.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncssh

from . import quoting
from .failures import LOST, ConnectionLostError
from .session import Session, close_channel, describe


@dataclass(frozen=True)
class StreamEnd:
    """Last item put on a stream's queue: the exit status, or the error that ended it."""

    exit_status: int | None
    error: BaseException | None = None


async def pump_lines(
    session: Session,
    argv: Sequence[quoting.Arg],
    sink: queue.Queue[tuple[str, str] | StreamEnd],
    cancel: asyncio.Event,
    cwd: quoting.Arg | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Put ``("stdout"|"stderr", line)`` items on ``sink`` until the program ends or cancel."""
    command = quoting.command_line(quoting.with_watchdog(argv), cwd=cwd, env=env)
    shown = describe([str(a) for a in argv])
    try:
        async with session._channels:
            process = await session.retrying(lambda: session.start_process(command, False))
            try:
                status = await _follow(process, sink, cancel)
            finally:
                await close_channel(process)
        sink.put(StreamEnd(status))
    except LOST:
        session.drop()
        sink.put(
            StreamEnd(
                None,
                ConnectionLostError(
                    f"the SSH connection to {session.where} was lost while following {shown}",
                    "start following again; nothing on the cluster was affected",
                ),
            )
        )
    except BaseException as exc:
        sink.put(StreamEnd(None, exc))
        if not isinstance(exc, Exception):
            raise


async def _follow(
    process: asyncssh.SSHClientProcess[bytes],
    sink: queue.Queue[tuple[str, str] | StreamEnd],
    cancel: asyncio.Event,
) -> int | None:
    async def pump(reader: asyncssh.SSHReader[bytes], name: str) -> None:
        while line := await reader.readline():  # b"" means end of stream
            sink.put((name, line.decode("utf-8", "replace").rstrip("\r\n")))

    readers: asyncio.Future[Any] = asyncio.gather(
        pump(process.stdout, "stdout"), pump(process.stderr, "stderr")
    )
    cancelled: asyncio.Future[Any] = asyncio.ensure_future(cancel.wait())
    await asyncio.wait([readers, cancelled], return_when=asyncio.FIRST_COMPLETED)
    if cancelled.done() and not readers.done():
        process.stdin.write_eof()  # the watchdog kills the program
        try:
            await asyncio.wait_for(asyncio.shield(readers), 5)
        except TimeoutError:
            readers.cancel()
        await asyncio.gather(readers, return_exceptions=True)
        return None
    cancelled.cancel()
    await readers
    await process.wait_closed()
    status = process.exit_status
    if status is None or (status < 0 and process.exit_signal is None):
        raise asyncssh.ConnectionLost("channel closed without an exit status")
    return status
