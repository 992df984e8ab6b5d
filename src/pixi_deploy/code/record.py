"""What this machine last sent to a code store, so a resubmit need not ask the cluster first.

A re-submit with no change finds its snapshot here and ships nothing: the job's submit script
checks that the snapshot is on the cluster in the same round trip as ``sbatch`` (and says so
when it was pruned; the snapshot is then sent again). A re-submit after an edit sends only what
changed against the last snapshot recorded here, in one round trip. The record is a hint, never
trusted for correctness: the cluster has the last word every time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from pixi_deploy.code.snapshot import Snapshot

KEEP = 4


class RemoteRecord:
    """``CACHE/code/remote/<store>.json``: the last few snapshots sent to one store."""

    def __init__(self, cache_dir: Path, store_id: str) -> None:
        name = hashlib.sha256(store_id.encode()).hexdigest()[:16]
        self.path = cache_dir / "code" / "remote" / f"{name}.json"

    def _read(self) -> dict[str, object]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _load(self) -> dict[str, dict[str, object]]:
        snapshots = self._read().get("snapshots", {})
        return snapshots if isinstance(snapshots, dict) else {}

    @property
    def zstd(self) -> bool:
        """Whether the store's cluster has zstd (learnt by the last full upload)."""
        return self._read().get("zstd") is True

    @zstd.setter
    def zstd(self, value: bool) -> None:
        if self.zstd != value:
            self._save(self._load(), zstd=value)

    def knows(self, snapshot_hash: str) -> bool:
        return snapshot_hash in self._load()

    def latest(self) -> tuple[str, dict[str, str]] | None:
        """(hash, path -> key or "->target") of the most recently sent snapshot."""
        snapshots = self._load()
        if not snapshots:
            return None
        newest = max(snapshots, key=lambda h: float(snapshots[h].get("time", 0)))  # type: ignore[arg-type]
        files = snapshots[newest].get("files")
        return (newest, dict(files)) if isinstance(files, dict) else None

    def known_keys(self) -> set[str]:
        """Object keys of the recorded snapshots (likely still in the store's .objects)."""
        keys: set[str] = set()
        for entry in self._load().values():
            files = entry.get("files")
            if isinstance(files, dict):
                keys.update(v for v in files.values() if not str(v).startswith("->"))
        return keys

    def remember(self, snapshot: Snapshot) -> None:
        snapshots = self._load()
        snapshots[snapshot.hash] = {"time": time.time(), "files": describe(snapshot)}
        newest = sorted(snapshots, key=lambda h: float(snapshots[h].get("time", 0)))[-KEEP:]  # type: ignore[arg-type]
        self._save({h: snapshots[h] for h in newest})

    def forget(self, snapshot_hash: str) -> None:
        snapshots = self._load()
        if snapshots.pop(snapshot_hash, None) is not None:
            self._save(snapshots)

    def _save(self, snapshots: dict[str, dict[str, object]], zstd: bool | None = None) -> None:
        data = {"zstd": self.zstd if zstd is None else zstd, "snapshots": snapshots}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".record-")
            with os.fdopen(fd, "w") as out:
                json.dump(data, out)
            os.replace(tmp, self.path)
        except OSError:
            pass  # only a hint


def describe(snapshot: Snapshot) -> dict[str, str]:
    """path -> object key, or "->target" for a symbolic link."""
    return {e.path: (e.key if e.link is None else f"->{e.link}") for e in snapshot.entries}
