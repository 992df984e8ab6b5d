"""Dagster Pipes over the SSH transport: context in, messages out, through files in the run dir.

Dagster's own clients pass the Pipes context as a file or environment variable and read the
messages back from a file (PipesSubprocessClient) or an API (PipesK8sClient reads pod logs).
A Slurm job runs on a compute node we cannot reach, but it shares a file system with the edge
node we are logged in to. So:

- :class:`RemoteFileContextInjector` writes the context JSON to ``<pipes dir>/context.json``
  over SFTP before the job is submitted; the payload's ``open_dagster_pipes()`` finds it
  through ``DAGSTER_PIPES_CONTEXT`` (sent as a job environment variable).
- :class:`RemoteFileMessageReader` follows ``<pipes dir>/messages.jsonl`` with ``tail -F`` on
  the same SSH connection, handing each line to Dagster as it is written (logs, materialization
  metadata, asset check results arrive while the job runs). When the job has ended it reads the
  file once more and handles whatever the stream had not delivered yet, so nothing written just
  before exit is lost.
- :class:`ExceptionCapturingReader` wraps any reader and keeps the payload's exception from
  the ``closed`` message, so that a failed asset shows the *remote* traceback, not "exit code 1".
"""

from __future__ import annotations

import json
import sys
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, cast

import dagster as dg
from dagster._core.pipes.client import PipesContextInjector, PipesMessageReader
from dagster._core.pipes.context import PipesMessageHandler
from dagster_pipes import PipesMessage

from pixi_deploy.transport import RemoteFileNotFoundError, Transport

PipesParams = dict[str, Any]
_JOIN_TIMEOUT = 30.0


class RemoteFileContextInjector(PipesContextInjector):
    """Write the Pipes context to a file on the cluster (atomically, over SFTP)."""

    def __init__(self, transport: Transport, path: str) -> None:
        self._transport = transport
        self._path = path

    @contextmanager
    def inject_context(self, context_data: Mapping[str, Any]) -> Iterator[PipesParams]:
        self._transport.put_bytes(json.dumps(context_data).encode(), self._path)
        yield {"path": self._path}

    def no_messages_debug_text(self) -> str:
        return f"Attempted to inject context via the cluster file {self._path}"


class RemoteFileMessageReader(PipesMessageReader):
    """Follow the payload's message file on the cluster while the job runs, then catch up."""

    def __init__(self, transport: Transport, path: str) -> None:
        self._transport = transport
        self._path = path
        self._seen = 0  # complete lines delivered by the tail stream (parsable or not)

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        self._transport.put_bytes(b"", self._path)  # tail -F then never waits for it
        lines = self._transport.iter_lines(["tail", "-n", "+1", "-F", self._path])
        thread = threading.Thread(
            target=self._follow, args=(lines, handler), name="pixi-deploy-pipes", daemon=True
        )
        thread.start()
        try:
            yield {"path": self._path, "include_stdio_in_messages": False}
        finally:
            lines.close()
            thread.join(_JOIN_TIMEOUT)
            if not thread.is_alive():  # else it may still deliver: better late than twice
                self._catch_up(handler)

    def _follow(self, lines: Any, handler: PipesMessageHandler) -> None:
        try:
            for stream, line in lines.follow():
                if stream != "stdout":
                    continue  # tail's own notices ("file appeared", ...)
                self._seen += 1
                _handle_line(line, handler)
        except Exception:
            handler.report_pipes_framework_exception(
                f"{type(self).__name__} reader thread", sys.exc_info()
            )

    def _catch_up(self, handler: PipesMessageHandler) -> None:
        try:
            text = self._transport.read_bytes(self._path).decode("utf-8", "replace")
        except RemoteFileNotFoundError:
            return
        complete = text.split("\n")[:-1]  # a line without "\n" was never finished
        for line in complete[self._seen :]:
            _handle_line(line, handler)
        self._seen = max(self._seen, len(complete))

    def no_messages_debug_text(self) -> str:
        return f"Attempted to read messages from the cluster file {self._path}"


def _handle_line(line: str, handler: PipesMessageHandler) -> None:
    line = line.strip()
    if not line:
        return
    try:
        message = json.loads(line)
    except ValueError:
        return  # not a Pipes message (the file is ours, but be lenient)
    if isinstance(message, dict) and "method" in message:
        handler.handle_message(cast("PipesMessage", message))


class _CapturingHandler:
    """Passes everything to Dagster's handler, noting the payload's exception on the way."""

    def __init__(self, inner: PipesMessageHandler, owner: ExceptionCapturingReader) -> None:
        self._inner = inner
        self._owner = owner

    def handle_message(self, message: Mapping[str, Any]) -> None:
        if message.get("method") == "closed":
            params = message.get("params") or {}
            if params.get("exception"):
                self._owner.exception = params["exception"]
        self._inner.handle_message(cast("PipesMessage", message))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ExceptionCapturingReader(PipesMessageReader):
    """Any message reader, plus the exception the payload reported when it closed Pipes."""

    def __init__(self, inner: PipesMessageReader) -> None:
        self._inner = inner
        self.exception: Mapping[str, Any] | None = None

    @contextmanager
    def read_messages(self, handler: PipesMessageHandler) -> Iterator[PipesParams]:
        proxy = cast("PipesMessageHandler", _CapturingHandler(handler, self))
        with self._inner.read_messages(proxy) as params:
            yield dict(params)

    def on_opened(self, opened_payload: Any) -> None:
        self._inner.on_opened(opened_payload)

    def on_launched(self, launched_payload: Any) -> None:
        self._inner.on_launched(launched_payload)

    def no_messages_debug_text(self) -> str:
        return str(self._inner.no_messages_debug_text())

    def remote_traceback(self) -> str | None:
        return format_pipes_exception(self.exception) if self.exception else None


def format_pipes_exception(exc: Mapping[str, Any]) -> str:
    """A Python-style traceback from Pipes' exception dict (name, message, stack, cause...)."""
    chain: list[tuple[str, str]] = []  # (text, how it led to the next one)
    current: Mapping[str, Any] | None = exc
    while current and len(chain) < 10:
        stack = "".join(current.get("stack") or [])
        head = f"Traceback (most recent call last):\n{stack}" if stack else ""
        name, message = current.get("name") or "Exception", str(current.get("message", ""))
        # dagster-pipes' message is format_exception_only's text, which names the class already
        last = (
            message if message.startswith(f"{name}:") or message == name else f"{name}: {message}"
        )
        text = f"{head}{last}"
        if current.get("cause"):
            link, current = _CAUSE, current["cause"]
        elif current.get("context"):
            link, current = _CONTEXT, current["context"]
        else:
            link, current = "", None
        chain.append((text.rstrip(), link))
    out = chain[-1][0]  # the oldest first, as Python prints a chain
    for text, link in reversed(chain[:-1]):
        out += link + text
    return out


_CAUSE = "\n\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\n\nDuring handling of the above exception, another exception occurred:\n\n"


class OutputForwarder:
    """Job output to this process's stdout/stderr (Dagster captures it as compute logs), keeping
    the last lines of each so a failure message can quote them."""

    def __init__(self, keep: int = 40) -> None:
        self.stdout: deque[str] = deque(maxlen=keep)
        self.stderr: deque[str] = deque(maxlen=keep)

    def on_stdout(self, line: str) -> None:
        self.stdout.append(line)
        print(line, file=sys.stdout, flush=True)

    def on_stderr(self, line: str) -> None:
        self.stderr.append(line)
        print(line, file=sys.stderr, flush=True)

    def stderr_tail(self) -> str:
        return "\n".join(self.stderr)


def failure_text(headline: str, remote_traceback: str | None, stderr_tail: str) -> str:
    """The message of a failed asset: what failed, then the payload's own traceback (from Pipes,
    else from its stderr), so the cause is readable in the Dagster UI without opening logs."""
    detail = remote_traceback or stderr_tail.strip()
    if not detail:
        return headline
    label = "payload traceback" if remote_traceback else "last lines of the payload's stderr"
    return f"{headline}\n\n{label}:\n{detail}"


def pipes_context(context: Any) -> Any:
    """The context a Pipes session needs: an asset check's ``AssetCheckExecutionContext`` has
    no ``has_assets_def`` & co., so its op context is used, as Dagster's own clients do."""
    if isinstance(context, dg.AssetCheckExecutionContext):
        return context.op_execution_context
    return context
