"""A job's own working copy of a code snapshot, made when the job starts.

The copy is ``cp -al`` of the snapshot: new folders, and hard links to the snapshot's files, so
it costs a few milliseconds whatever the files weigh. The snapshot's files are read-only
(mode 0444, or 0555 when executable), so a job that writes into its folder creates new files
there (or replaces one: ``rm`` / rename, then write) and never changes the snapshot, which other
jobs share. The job holds a shared lock on the snapshot while it runs, so ``prune`` never
removes one a running job uses, and its log names the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

from pixi_deploy.errors import ConfigError, SchedulerError
from pixi_deploy.transport import quoting

#: stderr marker of the submit script when the snapshot is not on the cluster (pruned).
MISSING_MARK = "pixi-deploy-missing-code"
CODE_FD = 7  # the in-use lock's descriptor (the environment's is 9)


class CodeSnapshotMissing(SchedulerError):
    """The code snapshot a job was submitted with is not on the cluster (any more)."""


@dataclass(frozen=True)
class CodeCheckout:
    """Where a job finds its code: ``base/code/<snapshot>/files``, entered at ``workdir``."""

    base: str
    snapshot: str
    workdir: str = ""  # relative to the snapshot's root

    @property
    def snapshot_dir(self) -> str:
        return f"{self.base}/code/{self.snapshot}"

    def shell(self) -> str:
        """Preamble lines: lock, copy, PIXI_PROJECT_ROOT (before the environment activates)."""
        q = quoting.quote
        lock = f"{self.base}/locks/code-{self.snapshot}.in-use"
        return (
            f"__pd_code={q(self.snapshot_dir)}\n"
            f"exec {CODE_FD}>>{q(lock)} && flock -s {CODE_FD} || "
            f'__pd_fail "cannot take the in-use lock of code snapshot {self.snapshot}"\n'
            f'[ -f "$__pd_code/snapshot.json" ] || __pd_fail "code snapshot {self.snapshot} is '
            'not on the cluster any more (pruned before the job started); submit again"\n'
            '__pd_work="$PIXI_DEPLOY_RUN_DIR/work${SLURM_ARRAY_TASK_ID:+-$SLURM_ARRAY_TASK_ID}"\n'
            'if [ ! -d "$__pd_work" ]; then\n'  # a requeued job keeps what it wrote before
            '  rm -rf "$__pd_work.partial"\n'
            '  cp -al "$__pd_code/files" "$__pd_work.partial" && mv -T "$__pd_work.partial" '
            f'"$__pd_work" || __pd_fail "cannot make the working copy of code snapshot '
            f'{self.snapshot}"\n'
            "fi\n"
            'export PIXI_PROJECT_ROOT="$__pd_work"\n'
            f"printf 'pixi-deploy: code snapshot %s, working copy %s\\n' {self.snapshot} "
            '"$__pd_work" >&2\n'
        )

    def cd_line(self) -> str:
        where = (
            f'"$PIXI_PROJECT_ROOT"/{quoting.quote(self.workdir)}'
            if self.workdir
            else ('"$PIXI_PROJECT_ROOT"')
        )
        shown = self.workdir or "."
        return f'cd {where} || __pd_fail "cannot enter {shown} in the working copy"\n'


def no_code_shell() -> str:
    """For a job without code: a PIXI_PROJECT_ROOT inherited from the submitting shell must
    not leak in; activate.sh then points it at the scripts the environment carries."""
    return "unset PIXI_PROJECT_ROOT\n"


def check_workdir(workdir: str | None) -> str:
    """``--workdir`` as a path inside the snapshot (relative, normalised, never escaping)."""
    if not workdir:
        return ""
    posix = PurePosixPath(workdir)
    parts: list[str] = []
    for part in posix.parts:
        if part in ("", "."):
            continue
        if part == ".." or posix.is_absolute():
            raise ConfigError(
                f"--workdir {workdir} is outside the code snapshot",
                "give a folder of the workspace, relative to its root (e.g. --workdir src)",
            )
        parts.append(part)
    return "/".join(parts)
