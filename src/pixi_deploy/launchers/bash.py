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


def signal_name(spec: JobSpec) -> str | None:
    """The signal the job asked for before its time limit (``--signal``), if any."""
    from pixi_deploy.slurm.spec import parse_signal

    if not spec.resources.signal:
        return None
    return parse_signal(str(spec.resources.signal))[0]


def start_in_background(spec: JobSpec) -> tuple[str, str]:
    """Bash that starts the user's work in the background as ``$__pd_child``, and the
    ``kill`` target that reaches it: the command itself (``exec``, so its pid is the
    command's), or for a script body the process group of a new session, so a signal
    reaches the script and the programs it runs, as Ctrl-C in a terminal would."""
    if spec.command is not None:
        return f"( exec {command_text(spec)} ) &\n__pd_child=$!\n", '"$__pd_child"'
    body = quoting.quote(command_text(spec))
    return f"setsid bash -c {body} bash &\n__pd_child=$!\n", '-- "-$__pd_child"'


def forward_signal(spec: JobSpec, signal: str) -> str:
    """Run the work in the background and hand ``signal`` on to it.

    Slurm sends ``--signal=B:...`` to the batch shell alone, and bash runs a trap only once
    its foreground child has exited, so a command run the plain way never sees the signal
    before SIGKILL arrives. Here the shell waits in ``wait``, which a trapped signal
    interrupts, passes the signal on and waits again until the work ends; the work's exit
    status becomes the job's.
    """
    start, target = start_in_background(spec)
    sig = quoting.quote(signal)
    return f"""{start}trap 'kill -s {sig} {target} 2>/dev/null' {sig}
while :; do
  wait "$__pd_child"; __pd_rc=$?
  kill -0 "$__pd_child" 2>/dev/null || break
done
exit "$__pd_rc"
"""


class BashLauncher:
    """Runs the command in the job's shell; its exit status becomes the job's."""

    def render(self, spec: JobSpec) -> str:
        signal = signal_name(spec)
        if signal is not None:
            return forward_signal(spec, signal)
        return command_text(spec) + "\n"

    def __repr__(self) -> str:
        return "BashLauncher()"
