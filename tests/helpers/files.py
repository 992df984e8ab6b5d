"""File-system set-up shared by tests of what a later run cleans up."""

from __future__ import annotations

import os
import time
from pathlib import Path


def age(path: Path, seconds: float = 3600) -> None:
    """Set ``path``'s times ``seconds`` back, e.g. past scratch.GRACE_SECONDS, as if a killed
    owner had left it long ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))
