"""A Ctrl-C whose exception Python drops (raised in a finalizer, or in a fork handler) is not
lost: loops that follow a remote program raise it again (`interrupts.raise_if_interrupted`)."""

from __future__ import annotations

import gc
import os
import signal
import sys

import pytest

from pixi_deploy import interrupts


class _SignalsWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):  # the handler runs here, where Python drops what it raises
            pass


@pytest.fixture
def cli_handlers():
    saved = {s: signal.getsignal(s) for s in interrupts.SIGNALS}
    interrupts.install_handlers()
    yield
    interrupts.install_handlers()  # forgets what this test's signals left pending
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_a_dropped_ctrl_c_is_raised_again(cli_handlers, monkeypatch) -> None:
    dropped: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: dropped.append(u.exc_type))
    interrupts.raise_if_interrupted()  # nothing arrived yet: nothing happens
    _SignalsWhenCollected()
    gc.collect()
    assert dropped == [KeyboardInterrupt]  # Python dropped it (and printed it, normally)
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()


def test_a_new_command_starts_with_nothing_pending(cli_handlers) -> None:
    with pytest.raises(interrupts.Terminated):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass
    interrupts.install_handlers()
    interrupts.raise_if_interrupted()  # the last command's signal does not stop this one
