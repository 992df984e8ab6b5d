"""The program an Executor job runs on the cluster: load the function, call it, store the result.

Shipped into the job's run folder as ``pixi_deploy_runner.py`` (with ``jobenv.py`` as
``pixi_deploy_jobenv.py``) and run by the environment's own ``python``, so it uses the standard
library only, plus ``cloudpickle`` from the environment to load what the Executor pickled.
Every task of the job (one per rank under ``srun``; an array task per element) writes one file
``result-<array index>-<rank>.pkl``, atomically, holding either ``("ok", value)`` or
``("error", exception or None, type name, message, formatted traceback)``; the Executor reads
it back over its SSH connection and returns the value or raises the exception with the remote
traceback attached.

Usage: ``python pixi_deploy_runner.py RUN_DIR``.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
import traceback
import types
from typing import Any

RUNNER_FILE = "pixi_deploy_runner.py"
JOBENV_FILE = "pixi_deploy_jobenv.py"
FUNCTION_FILE = "function.pkl"
JOBENV_MODULE = "pixi_deploy.slurm.jobenv"
# exit status of a task whose function raised (the job ends FAILED, the result says why)
FUNCTION_RAISED = 3


def arguments_file(index: int) -> str:
    return f"arguments-{index}.pkl"


def result_file(index: int, rank: int) -> str:
    return f"result-{index}-{rank}.pkl"


def install_job_environment(run_dir: str) -> None:
    """Make ``pixi_deploy.slurm.jobenv`` (and so ``JobEnvironment``) importable, from the
    shipped copy, unless the environment has pixi-deploy itself: functions that use it were
    pickled with a reference to that module."""
    try:
        if importlib.util.find_spec("pixi_deploy") is not None:
            return
    except (ImportError, ValueError):
        pass
    spec = importlib.util.spec_from_file_location(JOBENV_MODULE, os.path.join(run_dir, JOBENV_FILE))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {JOBENV_FILE} from {run_dir}")
    module = importlib.util.module_from_spec(spec)
    package = types.ModuleType("pixi_deploy")
    package.__path__ = []
    slurm = types.ModuleType("pixi_deploy.slurm")
    slurm.__path__ = []
    sys.modules.update({"pixi_deploy": package, "pixi_deploy.slurm": slurm, JOBENV_MODULE: module})
    spec.loader.exec_module(module)
    package.slurm = slurm  # type: ignore[attr-defined]
    slurm.jobenv = module  # type: ignore[attr-defined]
    slurm.JobEnvironment = module.JobEnvironment  # type: ignore[attr-defined]


def _write(path: str, data: bytes) -> None:
    """All or nothing (rename); no fsync: the reader needs the file visible once this
    process has closed it (close-to-open, also on NFS), not on disk after a power cut."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _error(exc: BaseException, dumps: Any) -> bytes:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    try:
        return bytes(dumps(("error", exc, name, str(exc), text)))
    except Exception:  # the exception itself does not pickle: send its text
        return bytes(dumps(("error", None, name, str(exc), text)))


def main(argv: list[str]) -> int:
    run_dir = argv[1] if len(argv) > 1 else os.environ["PIXI_DEPLOY_RUN_DIR"]
    index = int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)
    rank = int(os.environ.get("SLURM_PROCID") or 0)
    target = os.path.join(run_dir, result_file(index, rank))
    try:
        import cloudpickle
    except ImportError as exc:  # the Executor checks first; say it clearly anyway
        _write(target, pickle.dumps(("error", None, "ImportError", str(exc), str(exc))))
        print(f"pixi-deploy: the environment has no cloudpickle: {exc}", file=sys.stderr)
        return FUNCTION_RAISED
    try:
        install_job_environment(run_dir)
        with open(os.path.join(run_dir, FUNCTION_FILE), "rb") as f:
            function = cloudpickle.load(f)
        with open(os.path.join(run_dir, arguments_file(index)), "rb") as f:
            args, kwargs = cloudpickle.load(f)
        value = function(*args, **kwargs)
    except BaseException as exc:
        _write(target, _error(exc, cloudpickle.dumps))
        traceback.print_exc()
        return FUNCTION_RAISED
    try:
        data = cloudpickle.dumps(("ok", value))
    except Exception as exc:
        error = TypeError(f"the function's return value could not be pickled: {exc}")
        _write(target, _error(error, cloudpickle.dumps))
        print(f"pixi-deploy: {error}", file=sys.stderr)
        return FUNCTION_RAISED
    _write(target, data)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
