"""How the user's command runs inside an allocation, once the environment is active.

A launcher only renders bash: the job script (pixi_deploy.slurm.script) takes care of the
environment lock, activation, secrets and the working directory, then pastes the launcher's
text. Plain commands use :class:`BashLauncher`; :class:`RayLauncher` brings up a Ray cluster
across the allocation's nodes around the driver.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .bash import BashLauncher, command_text
from .ray import RayLauncher

if TYPE_CHECKING:
    from pixi_deploy.slurm.spec import JobSpec


@runtime_checkable
class Launcher(Protocol):
    """Renders the bash that runs inside the allocation (after activation)."""

    def render(self, spec: JobSpec) -> str: ...


__all__ = ["BashLauncher", "Launcher", "RayLauncher", "command_text"]
