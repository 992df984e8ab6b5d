"""How long work reports progress without the core depending on a terminal library.

The core calls a :class:`Reporter`; the CLI passes one that draws Rich progress bars, the Python
API defaults to :class:`NullReporter`, and tests can pass a recording one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def step(self, message: str) -> None:
        """One line about what happens next (printed, logged, or ignored)."""

    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        """A measurable piece of work; the returned function advances it by n units."""


class NullReporter:
    def step(self, message: str) -> None:
        return None

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        yield lambda n: None


class RecordingReporter:
    """Keeps every step message; handy for tests and for `--json` summaries."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.tasks: list[tuple[str, int | None, int]] = []

    def step(self, message: str) -> None:
        self.steps.append(message)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n

        yield advance
        self.tasks.append((description, total, done[0]))
