"""The default launcher: run the command (or script body) as it is."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixi_deploy.transport import quoting

if TYPE_CHECKING:
    from pixi_deploy.slurm.spec import JobSpec


def command_text(spec: JobSpec) -> str:
    """The user's work as bash: argv quoted through the transport's one quoting rule, or the
    script body verbatim (it is the user's own bash)."""
    if spec.command is not None:
        return quoting.join(list(spec.command))
    return spec.script or "true"


class BashLauncher:
    """Runs the command in the job's shell; its exit status becomes the job's."""

    def render(self, spec: JobSpec) -> str:
        return command_text(spec) + "\n"

    def __repr__(self) -> str:
        return "BashLauncher()"
