"""Rich rendering for the CLI: step lines and progress bars on stderr, so stdout stays parseable."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from pixi_deploy.progress import Advance


class RichReporter:
    """Steps as dim lines, measurable work as a transient progress bar (hidden when not a TTY)."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.quiet = quiet

    def step(self, message: str) -> None:
        if not self.quiet:
            self.console.print(Text.assemble(("• ", "cyan"), message), highlight=False)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        if self.quiet or not self.console.is_terminal:
            yield lambda n: None
            return
        columns = [
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
        with Progress(*columns, console=self.console, transient=True) as progress:
            task_id = progress.add_task(description, total=total)
            yield lambda n: progress.advance(task_id, n)
