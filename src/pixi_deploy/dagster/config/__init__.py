"""dagster-slurm's ``config`` modules under the same names: deployment environments, execution
modes (:mod:`.environment`) and the per-run launchpad settings (:mod:`.runtime`)."""

from __future__ import annotations

from .environment import Environment, ExecutionMode
from .runtime import RuntimeVariant, SlurmRunConfig

__all__ = ["Environment", "ExecutionMode", "RuntimeVariant", "SlurmRunConfig"]
