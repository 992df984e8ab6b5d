"""Mode ``local``: the payload runs as a subprocess of the Dagster process, no cluster involved.

This is Dagster's PipesSubprocessClient with the same failure reporting as the cluster modes
(the payload's traceback in the asset's error) and termination that cannot leave an orphan:
an interrupted run sends SIGINT, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from dagster import AssetExecutionContext, OpExecutionContext
from dagster._core.errors import DagsterPipesExecutionError
from dagster._core.pipes.client import PipesClientCompletedInvocation
from dagster._core.pipes.utils import (
    PipesTempFileContextInjector,
    PipesTempFileMessageReader,
    open_pipes_session,
)

from .pipes import ExceptionCapturingReader, OutputForwarder, failure_text

_TERMINATION_GRACE = 20.0


def run_local(
    context: AssetExecutionContext | OpExecutionContext,
    payload_path: str | None,
    *,
    python: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    extras: Mapping[str, Any] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    command: Sequence[str] | None = None,
) -> PipesClientCompletedInvocation:
    """Run ``python payload_path`` (or ``command``: a task's) locally inside a Pipes session
    and return its results."""
    interpreter = python or sys.executable
    if command is None:
        payload = Path(payload_path or "")
        if payload_path is None or not payload.is_file():
            raise DagsterPipesExecutionError(f"payload {payload_path} does not exist")
        command, shown = [interpreter, str(payload)], f"payload {payload.name}"
    else:
        shown = "the task"
    reader = ExceptionCapturingReader(PipesTempFileMessageReader())
    output = OutputForwarder()
    with open_pipes_session(
        context=context,
        context_injector=PipesTempFileContextInjector(),
        message_reader=reader,
        extras=dict(extras or {}),
    ) as session:
        env = {
            **os.environ,
            **{k: str(v) for k, v in (extra_env or {}).items()},
            "PYTHONUNBUFFERED": "1",
            **session.get_bootstrap_env_vars(),
        }
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        pumps = [
            _pump(process.stdout, output.on_stdout),
            _pump(process.stderr, output.on_stderr),
        ]
        try:
            code = process.wait(timeout=timeout)
        except BaseException:  # interrupted run, KeyboardInterrupt or timeout: stop the payload
            context.log.info("[pixi-deploy] execution interrupted: stopping the local payload")
            _terminate(process)
            raise
        finally:
            for pump in pumps:
                pump.join(10)
    if code != 0:
        raise DagsterPipesExecutionError(
            failure_text(
                f"{shown} failed with exit code {code} (local mode)",
                reader.remote_traceback(),
                output.stderr_tail(),
            )
        )
    return PipesClientCompletedInvocation(
        session, metadata={"pixi_deploy_mode": "local", "python": interpreter}
    )


def _pump(stream: IO[str] | None, callback: Any) -> threading.Thread:
    def run() -> None:
        if stream is None:
            return
        for line in stream:
            callback(line.rstrip("\n"))

    thread = threading.Thread(target=run, name="pixi-deploy-local-output", daemon=True)
    thread.start()
    return thread


def _terminate(process: subprocess.Popen[str]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # a chance to close Pipes and clean up
    try:
        process.wait(timeout=_TERMINATION_GRACE)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
