"""Ctrl-C and SIGTERM as exceptions, and the few steps they must wait for.

The CLI turns SIGINT into KeyboardInterrupt and SIGTERM into `Terminated`, raised wherever the
program is, so that every ``finally`` removes its work folders. A few steps must not be cut in
two: creating a temporary folder and arming the code that removes it (an exception between the
two leaks the folder), removing it, and rattler's installer (which keeps writing from its own
threads after its Python call is cancelled). `deferred` holds a signal back until such a step is
done, then raises it.

This is done with Python-level handlers, not a thread's signal mask: a process-directed signal
goes to any thread that does not block it (rattler's runtime threads, thread pools), and Python
then runs the handler in the main thread all the same.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)


class Terminated(BaseException):
    """SIGTERM, raised where the program is so that every `finally` cleans up (work folders)."""


#: The signals the CLI's handlers have raised, in order. Python prints and drops an exception
#: raised where it cannot propagate (a finalizer, a fork handler), so a loop that waits for a
#: long time checks here too (`raise_if_interrupted`).
_received: list[int] = []


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise Terminated()


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    raise KeyboardInterrupt()


def install_handlers() -> None:
    """SIGTERM raises `Terminated`, SIGINT KeyboardInterrupt; main thread only."""
    if threading.current_thread() is threading.main_thread():
        _received.clear()  # a new command (the CLI may run several in one process, as tests do)
        signal.signal(signal.SIGTERM, raise_terminated)
        signal.signal(signal.SIGINT, raise_keyboard_interrupt)


def raise_if_interrupted() -> None:
    """Raise again a signal whose exception was lost: called by loops that wait on a remote
    program (which would otherwise go on following it after a Ctrl-C). Main thread only."""
    if _received and threading.current_thread() is threading.main_thread():
        raise KeyboardInterrupt() if _received[-1] == signal.SIGINT else Terminated()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """SIGINT/SIGTERM arriving in the block are delivered when it ends, as the handler that was
    in place would have delivered them (an exception, or the default action). Nests. Outside
    the main thread it does nothing: there, Python never runs signal handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        arrived.append(signum)

    previous: dict[int, Any] = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, hold)
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if arrived:
            _deliver(arrived[0], previous[arrived[0]])


def _deliver(signum: int, handler: Callable[[int, FrameType | None], Any] | int | None) -> None:
    if callable(handler):
        handler(signum, None)  # ours or Python's: raises (or, nested, holds it again)
    elif handler == signal.SIG_DFL:
        os.kill(os.getpid(), signum)  # the default action, now that the step is done
