"""The code store on the cluster: content-addressed snapshots under ``BASE/code``.

Sending a snapshot is one stream into one remote ``tar -x`` (code/stream.py), in one of two
shapes:

* **after an edit**: the snapshot this machine sent last is the base. The cluster copies its
  tree with ``cp -al``, deletes what went, and the stream carries only the changed files (their
  bytes, unless the cluster holds that content already) and their hard links. One round trip,
  about the changed files' bytes on the wire.
* **otherwise** (first submit, another machine, a pruned base): one round trip asks which
  objects the cluster lacks, and the stream carries those and the whole tree as hard links.

Either way the tree is built beside its final name and renamed into place only when whole, so
a job never sees half a snapshot. A cut connection is resumed: objects that arrived whole are
kept (their names are their sha256, which the cluster checks) and only the others go again.
A resubmit with no change sends nothing at all (code/record.py).
"""

from __future__ import annotations

import json
import secrets
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pixi_deploy import __version__
from pixi_deploy.code import remote_scripts as sh
from pixi_deploy.code.record import RemoteRecord, describe
from pixi_deploy.code.snapshot import Snapshot, SnapshotEntry
from pixi_deploy.code.stream import INCOMING, STORED, StreamPlan, unique_objects, write_stream
from pixi_deploy.errors import StoreError
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.transport import ConnectionLostError, RemoteCommandError, Transport, sh_c
from pixi_deploy.workspace import git_state

MAX_ATTEMPTS = 4
#: Deleted paths travel as arguments of the remote script; past this, the whole tree is sent.
MAX_DELETIONS_TEXT = 32_000


@dataclass
class CodeTransfer:
    """What sending a snapshot moved: tests and benchmarks assert on it."""

    mode: str = "none"  # none (already there), delta, full
    objects_total: int = 0
    objects_sent: int = 0
    content_bytes: int = 0  # file bytes of the objects sent (before compression)
    bytes_uploaded: int = 0  # bytes that crossed the connection
    round_trips: int = 0
    attempts: int = 0


class CodeStore:
    """Code snapshots under ``base/code`` on the cluster behind ``transport``."""

    def __init__(self, transport: Transport, base: str, *, cache_dir: Path) -> None:
        self.transport = transport
        self.base = transport.expand_path(base).rstrip("/") or "/"
        settings = transport.settings
        self.record = RemoteRecord(
            cache_dir, f"{settings.user}@{settings.host}:{settings.port}|{self.base}"
        )
        self.last_transfer = CodeTransfer()

    def snapshot_dir(self, snapshot_hash: str) -> str:
        return f"{self.base}/code/{snapshot_hash}"

    # -- sending ------------------------------------------------------------------------------
    def ensure(self, snapshot: Snapshot, reporter: Reporter | None = None) -> str:
        """Make sure ``snapshot`` is on the cluster; returns its folder there.

        Trusts the local record that it was sent before (no round trip at all): the submit
        script checks it again, and :meth:`forget` + ``ensure`` send it after all."""
        reporter = reporter or NullReporter()
        transfer = self.last_transfer = CodeTransfer(objects_total=len(_objects(snapshot)))
        if self.record.knows(snapshot.hash):
            reporter.step(f"code snapshot {snapshot.hash} is on the cluster: nothing to send")
            return self.snapshot_dir(snapshot.hash)
        before = self.transport.stats.bytes_uploaded
        try:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                transfer.attempts = attempt
                try:
                    latest = self.record.latest() if attempt == 1 else None
                    delta = latest is not None and latest[0] != snapshot.hash
                    if delta and latest and self._send_delta(snapshot, latest, reporter):
                        break
                    self._send_full(snapshot, reporter)
                    break
                except ConnectionLostError:
                    if attempt == MAX_ATTEMPTS:
                        raise
                    reporter.step("the connection dropped; resuming the code upload")
        finally:
            transfer.bytes_uploaded = self.transport.stats.bytes_uploaded - before
        self.record.remember(snapshot)
        return self.snapshot_dir(snapshot.hash)

    def forget(self, snapshot_hash: str) -> None:
        """The cluster said the snapshot is gone: the next :meth:`ensure` sends it."""
        self.record.forget(snapshot_hash)

    def _send_delta(
        self, snapshot: Snapshot, latest: tuple[str, dict[str, str]], reporter: Reporter
    ) -> bool:
        base_hash, base_files = latest
        new = describe(snapshot)
        deletions = sorted(p for p in base_files if p not in new)
        if sum(len(p) + 1 for p in deletions) > MAX_DELETIONS_TEXT:
            return False
        changed = tuple(e for e in snapshot.entries if base_files.get(e.path) != new[e.path])
        known = self.record.known_keys()
        send = tuple(e for e in unique_objects(changed) if e.key not in known)
        sent_keys = {e.key for e in send}
        where = {e.key: INCOMING if e.key in sent_keys else STORED for e in _objects(changed)}
        plan = StreamPlan(snapshot, _nonce(), send, changed, where, self._snapshot_json(snapshot))
        reporter.step(
            f"sending code snapshot {snapshot.hash}: {len(changed)} changed and "
            f"{len(deletions)} deleted files since {base_hash} ({plan.content_bytes / 1e3:.1f} kB)"
        )
        result = self._receive(plan, base_hash, deletions, reporter)
        outcome = result.stdout.strip().splitlines()[-1:] if result.exit_status == 0 else []
        if outcome in (["published"], ["present"]):
            self._count(plan, "delta")
            return True
        self.record.forget(base_hash)  # gone from the cluster, or an object it named was
        return False

    def _send_full(self, snapshot: Snapshot, reporter: Reporter) -> None:
        objects = _objects(snapshot.entries)
        keys = "".join(f"{e.key}\n" for e in objects)
        self.last_transfer.round_trips += 1
        try:
            listed = self.transport.run_script(sh.MISSING, [self.base, snapshot.hash], input=keys)
        except RemoteCommandError as error:
            raise _store_error(error.stderr, self.base) from error
        lines = listed.stdout.splitlines()
        self.record.zstd = "zstd=yes" in lines
        if "present" in lines:
            self.last_transfer.mode = "full"
            return
        state: dict[str, str] = {}
        for line in lines:
            flag, _, key = line.partition(" ")
            if key:
                state[key] = flag
        send = tuple(e for e in objects if state.get(e.key) == "m")
        where = {e.key: INCOMING if e.key in state else STORED for e in objects}
        plan = StreamPlan(
            snapshot, _nonce(), send, snapshot.entries, where, self._snapshot_json(snapshot)
        )
        resumed = len([v for v in state.values() if v == "i"])
        reporter.step(
            f"sending code snapshot {snapshot.hash}: {len(send)} of {len(objects)} files "
            f"({plan.content_bytes / 1e6:.1f} MB)"
            + (f", {resumed} kept from the cut upload" if resumed else "")
        )
        result = self._receive(plan, "", [], reporter)
        if result.exit_status != 0 or not result.stdout.strip():
            detail = result.stderr.strip().splitlines()[-1:] or [f"exit {result.exit_status}"]
            raise _store_error(detail[0], self.base)
        self._count(plan, "full")

    def _receive(
        self, plan: StreamPlan, base_hash: str, deletions: list[str], reporter: Reporter
    ) -> Any:
        compression = "zstd" if self.record.zstd else "none"
        args = [self.base, plan.snapshot.hash, plan.nonce, base_hash, compression, *deletions]
        self.last_transfer.round_trips += 1
        with reporter.task("upload", plan.content_bytes or None) as advance:
            return self.transport.pipe(
                sh_c(sh.RECEIVE, args),
                lambda write: write_stream(write, plan, compression, advance),
            )

    def _count(self, plan: StreamPlan, mode: str) -> None:
        transfer = self.last_transfer
        transfer.mode = mode
        transfer.objects_sent += len(plan.send)
        transfer.content_bytes += plan.content_bytes

    def _snapshot_json(self, snapshot: Snapshot) -> bytes:
        state = git_state(snapshot.root)
        data = {
            "hash": snapshot.hash,
            "digest": snapshot.digest,
            "files": len(snapshot.entries),
            "bytes": snapshot.size,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "workspace": snapshot.root.name,
            "source_host": socket.gethostname(),
            "git_commit": state["git_commit"],
            "git_dirty": state["git_dirty"],
            "tool_version": __version__,
        }
        return (json.dumps(data, indent=2) + "\n").encode()

    # -- list / prune ---------------------------------------------------------------------------
    def snapshots(self) -> list[dict[str, Any]]:
        """Every snapshot's metadata, most recently used first, with its ``path``."""
        out = self.transport.run_script(sh.LIST, [self.base]).stdout
        found = []
        for chunk in out.split("\036"):
            if chunk.strip():
                try:
                    data = json.loads(chunk)
                except ValueError:
                    continue
                if isinstance(data, dict) and "hash" in data:
                    data["path"] = self.snapshot_dir(str(data["hash"]))
                    found.append(data)
        return found

    def prune(self, keep: int) -> list[str]:
        """Remove all but the ``keep`` most recently used snapshots, never one a job holds."""
        try:
            out = self.transport.run_script(sh.PRUNE, [self.base, str(keep)]).stdout
        except RemoteCommandError as error:
            raise _store_error(error.stderr, self.base) from error
        removed = out.split()
        for snapshot_hash in removed:
            self.record.forget(snapshot_hash)
        return [self.snapshot_dir(h) for h in removed]


def _objects(entries: Snapshot | tuple[SnapshotEntry, ...]) -> list[SnapshotEntry]:
    return unique_objects(entries.entries if isinstance(entries, Snapshot) else entries)


def _nonce() -> str:
    return secrets.token_hex(6)


def _store_error(detail: str, base: str) -> StoreError:
    text = " ".join(detail.split())[-300:]
    if "No space left" in text or "Disk quota" in text:
        return StoreError(
            f"the cluster has no space left under {base} for the code snapshot",
            "free space, prune old snapshots (`pixi-deploy prune --target ssh`), or pick "
            "another SLURM_DEPLOYMENT_BASE_PATH",
        )
    if "Permission denied" in text or "not writable" in text or "Read-only" in text:
        return StoreError(
            f"cannot write the code snapshot under {base} on the cluster",
            "pick a SLURM_DEPLOYMENT_BASE_PATH you can write to",
        )
    return StoreError(f"the cluster could not store the code snapshot: {text}")
