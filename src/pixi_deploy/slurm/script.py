"""The bash a run executes on the cluster: sbatch directives, environment lock, activation, secrets.

Every run gets its own folder ``BASE/runs/<run-id>/`` holding ``job.sh`` (or ``step.sh`` in a
session), the payload files, the log files and, briefly, ``secrets.env``. The job script is
world-readable in Slurm's spool, so secrets never appear in it: they are written to a 0600 file
in a 0700 run folder, sourced, and removed. The environment is used under
``flock -s BASE/locks/<key>.in-use`` so that ``prune`` (which takes that lock exclusively while
moving an environment away) never removes an environment a running job uses, and a job that
starts after a prune fails with a clear message instead of a confusing "command not found".
"""

from __future__ import annotations

import io
import re
import secrets as _secrets
import tarfile
import time

from pixi_deploy.code.checkout import no_code_shell
from pixi_deploy.errors import SchedulerError
from pixi_deploy.launchers import BashLauncher
from pixi_deploy.store.image import MOUNT_AND_RUN
from pixi_deploy.target import UNMET_STATUS
from pixi_deploy.transport import quoting

from .spec import JobSpec

JOB_SCRIPT = "job.sh"
STEP_SCRIPT = "step.sh"
SECRETS_FILE = "secrets.env"
RESERVED = {JOB_SCRIPT, STEP_SCRIPT, SECRETS_FILE}
# Exit status of the preamble when the environment is missing or cannot be activated.
ENV_MISSING_STATUS = 97
ENV_MISSING_MARK = "pixi-deploy: the environment"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

_PREAMBLE = r"""
export PIXI_DEPLOY_RUN_DIR={run_dir}
__pd_fail() {{ printf 'pixi-deploy: %s\n' "$1" >&2; exit {status}; }}
{image}if [ -f "$PIXI_DEPLOY_RUN_DIR/{secrets}" ]; then
  . "$PIXI_DEPLOY_RUN_DIR/{secrets}" || __pd_fail "reading the secrets file failed"
  {remove_secrets}
fi
{code}__pd_env={env_path}
if [ -n "$__pd_env" ]; then
  __pd_real=$(readlink -f -- "$__pd_env" 2>/dev/null) || __pd_real=$__pd_env
  [ -n "$__pd_real" ] || __pd_real=$__pd_env
  __pd_key=${{__pd_real##*/}}
  __pd_base=${{__pd_real%/envs/*}}
  if [ "$__pd_base/envs/$__pd_key" = "$__pd_real" ] && [ -d "$__pd_base/locks" ]; then
    # shared in-use lock for the whole run (fd 9 is inherited by every child): prune skips us
    exec 9>>"$__pd_base/locks/$__pd_key.in-use" && flock -s 9 \
      || __pd_fail "cannot take the in-use lock of $__pd_real"
  fi
  [ -f "$__pd_real/activate.sh" ] || __pd_fail \
    "the environment $__pd_env does not exist on the cluster (pruned or never deployed); deploy it again"
  # activate.sh checks this node first (glibc, CUDA driver): on a node that cannot run the
  # environment it has said why in one line, and the job ends with that status
  . "$__pd_real/activate.sh"; __pd_status=$?
  [ "$__pd_status" != {unmet} ] || exit {unmet}
  [ "$__pd_status" = 0 ] || __pd_fail "the environment $__pd_env could not be activated"
  export PIXI_DEPLOY_ENVIRONMENT="$__pd_real"
fi
{cd}"""


def new_run_id() -> str:
    """Sortable by time, unique across processes: ``20240131-120000-1a2b3c4d``."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + _secrets.token_hex(4)


def log_names(array: bool) -> tuple[str, str]:
    """stdout/stderr file names in the run dir; arrays get one pair per task (``%A_%a``)."""
    if array:
        return "stdout-%A_%a.log", "stderr-%A_%a.log"
    return "stdout.log", "stderr.log"


def _directive(option: str) -> str:
    # sbatch's #SBATCH parser understands double quotes; only needed with blanks in a value
    if any(c.isspace() for c in option) and "=" in option:
        name, value = option.split("=", 1)
        if '"' in value:
            raise SchedulerError(f"the sbatch option {option!r} mixes blanks and double quotes")
        option = f'{name}="{value}"'
    return f"#SBATCH {option}"


# A squashfs deployment (store/image.py): its mountpoint BASE/envs/<hash> is empty and the image
# BASE/images/<hash>.sqfs beside it. The script then runs again, whole, with the image mounted
# at the mountpoint for this job only (the secrets file is still there for that run; the
# in-use lock on fd 9 is inherited, so prune leaves the image alone while the job runs).
_IMAGE = r"""__pd_env={env_path}
if [ -n "$__pd_env" ] && [ -z "${{PIXI_DEPLOY_IMAGE_MOUNTED:-}}" ]; then
  __pd_real=$(readlink -f -- "$__pd_env" 2>/dev/null) || __pd_real=$__pd_env
  [ -n "$__pd_real" ] || __pd_real=$__pd_env
  __pd_key=${{__pd_real##*/}}
  __pd_base=${{__pd_real%/envs/*}}
  if [ ! -f "$__pd_real/activate.sh" ] && [ -d "$__pd_base/locks" ] \
      && [ -f "$__pd_base/images/$__pd_key.sqfs" ]; then
    exec 9>>"$__pd_base/locks/$__pd_key.in-use" && flock -s 9 \
      || __pd_fail "cannot take the in-use lock of $__pd_real"
    exec /bin/sh -c {mount} sh "$__pd_base/images/$__pd_key.sqfs" "$__pd_real" "" \
      /bin/bash "$0" "$@"
  fi
fi
"""


def preamble(spec: JobSpec, run_dir: str, *, keep_secrets: bool = False) -> str:
    """Everything before the launcher: run dir, secrets, lock + activation, workdir, env vars."""
    remove = ":" if keep_secrets else 'rm -f -- "$PIXI_DEPLOY_RUN_DIR/' + SECRETS_FILE + '"'
    env_path = quoting.quote(spec.environment_path or "")
    text = _PREAMBLE.format(
        run_dir=quoting.quote(run_dir),
        status=ENV_MISSING_STATUS,
        unmet=UNMET_STATUS,
        secrets=SECRETS_FILE,
        image=_IMAGE.format(env_path=env_path, mount=quoting.quote(MOUNT_AND_RUN))
        if spec.environment_path
        else "",
        remove_secrets=remove,
        code=spec.code.shell() if spec.code else no_code_shell(),
        env_path=env_path,
        cd=spec.code.cd_line() if spec.code else _cd_line(spec.workdir or run_dir),
    )
    exports = [f"export {_check_env(k)}={quoting.quote(v)}" for k, v in spec.env.items()]
    return text + ("\n".join(exports) + "\n" if exports else "")


def _cd_line(workdir: str) -> str:
    shown = workdir.replace("'", "").replace('"', "")
    return (
        f'cd {quoting.quote(workdir)} || __pd_fail "cannot enter the working directory {shown}"\n'
    )


def job_script(spec: JobSpec, run_dir: str) -> str:
    """The sbatch script: directives, then the preamble, then the launcher's text."""
    out_name, err_name = log_names(spec.array is not None)
    directives = [
        f"--job-name={spec.name}",
        f"--output={run_dir}/{out_name}",
        f"--error={run_dir}/{err_name}",
        *spec.resources.options(),
    ]
    if spec.array:
        directives.append(f"--array={spec.array}")
    directives += ordering_directives(spec)
    head = ["#!/bin/bash", *(_directive(d) for d in directives)]
    for component in spec.het_components:  # a heterogeneous job: one block per component
        head.append("#SBATCH hetjob")
        head.extend(_directive(d) for d in component.options())
    head.append("# generated by pixi-deploy; secrets are never written into this file")
    # array tasks share the secrets file, so it stays (0600, in a 0700 folder) until cleanup
    body = preamble(spec, run_dir, keep_secrets=spec.array is not None)
    return "\n".join(head) + "\n" + attempt_logs(spec, run_dir) + body + _launch(spec)


def ordering_directives(spec: JobSpec) -> list[str]:
    """``--dependency``, and ``--kill-on-invalid-dep=yes`` with it: a job whose dependency
    can never be met (the job it waits for failed) is then ended by Slurm as CANCELLED with
    reason DependencyNeverSatisfied, instead of pending forever; ``--open-mode=append`` for a
    requeueable job, so that a second attempt does not truncate the first one's logs."""
    out = []
    if spec.dependency:
        out += [f"--dependency={spec.dependency}", "--kill-on-invalid-dep=yes"]
    if spec.resources.requeue:
        out.append("--open-mode=append")
    return out


def attempt_logs(spec: JobSpec, run_dir: str) -> str:
    """For a requeueable job: every rerun writes its own log files, so the attempts stay
    apart. Slurm opens --output/--error (in append mode) before the script runs and counts
    reruns in SLURM_RESTART_COUNT; attempt 0 keeps ``stdout.log``, attempt N writes
    ``stdout.attempt-N.log`` (arrays: ``stdout-<job>_<task>.attempt-N.log``)."""
    if not spec.resources.requeue:
        return ""
    out, err = log_names(spec.array is not None)
    task = "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
    names = [n.replace("%A_%a", task).removesuffix(".log") for n in (out, err)]
    run = quoting.quote(run_dir)
    return f"""__pd_attempt=${{SLURM_RESTART_COUNT:-0}}
if [ "$__pd_attempt" -gt 0 ]; then
  exec >>{run}/"{names[0]}.attempt-$__pd_attempt.log" 2>>{run}/"{names[1]}.attempt-$__pd_attempt.log"
fi
"""


def step_script(spec: JobSpec, run_dir: str) -> str:
    """The script an ``srun`` step runs inside a session's allocation (no directives)."""
    return "#!/bin/bash\n# pixi-deploy session step\n" + preamble(spec, run_dir) + _launch(spec)


def _launch(spec: JobSpec) -> str:
    launcher = spec.launcher or BashLauncher()
    return launcher.render(spec)


def _check_env(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise SchedulerError(f"{name!r} is not a valid environment variable name")
    return name


def secrets_text(values: dict[str, str]) -> str:
    """``export NAME='value'`` lines; only ever sent over stdin and stored 0600."""
    return "".join(f"export {_check_env(k)}={quoting.quote(v)}\n" for k, v in values.items())


def bundle(spec: JobSpec, script_name: str, script: str) -> bytes:
    """A tar of the run folder's inputs, unpacked remotely under ``umask 077`` (0600 files)."""
    for name in spec.files:
        if name in RESERVED or name.startswith(("stdout", "stderr")):
            raise SchedulerError(f"payload file name {name!r} is reserved by pixi-deploy")
    buffer = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes, mode: int) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, now
            tar.addfile(info, io.BytesIO(data))

        add(script_name, script.encode(), 0o700)
        if spec.secrets:
            add(SECRETS_FILE, secrets_text(spec.secrets).encode(), 0o600)
        for name, data in spec.files.items():
            add(name, data, 0o600)
    return buffer.getvalue()
