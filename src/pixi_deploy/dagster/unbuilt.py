"""dagster-slurm names with no pixi-deploy counterpart yet: importable, failing when used.

Code that imports them (``from dagster_slurm import SlurmPipesClient``) must load after the
import is changed; using them stops with one line that says what to use instead.
"""

from __future__ import annotations

from typing import Any, NoReturn

from pixi_deploy.errors import ConfigError


def _unbuilt(name: str, instead: str) -> NoReturn:
    raise ConfigError(f"{name} is not part of pixi-deploy", instead)


class SlurmAllocation:
    """dagster-slurm's handle on a session's allocation (internal there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unbuilt("SlurmAllocation", "SlurmSessionResource holds the allocation")


class LocalPipesClient:
    """dagster-slurm's local Pipes client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unbuilt("LocalPipesClient", "use ComputeResource(mode='local').run(...)")


class SlurmPipesClient:
    """dagster-slurm's Slurm Pipes client."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _unbuilt("SlurmPipesClient", "use ComputeResource(mode='slurm').run(...)")


def build_slurm_orphan_reconcile_sensor(*args: Any, **kwargs: Any) -> NoReturn:
    _unbuilt(
        "build_slurm_orphan_reconcile_sensor",
        "an interrupted run cancels its jobs itself; list leftovers with `squeue`",
    )


def reconcile_orphaned_slurm_runs(*args: Any, **kwargs: Any) -> NoReturn:
    _unbuilt(
        "reconcile_orphaned_slurm_runs",
        "an interrupted run cancels its jobs itself; list leftovers with `squeue`",
    )
