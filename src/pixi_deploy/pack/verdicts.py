"""Remember, beside a cached archive, that its payload passed `pack.untar`'s checks.

Why: a deploy to a cluster ships a package's payload as it is and writes only what differs per
prefix here, which needs only the first few members of the payload. Checking every member before
the payload is sent means decompressing it all (for 300 packages, 1 GB: ~4 s of CPU more per
deploy). The outcome is a function of the archive's bytes, so it is kept once per archive: the
archive is still checked against its sha256 every time it is used, and the verdict only counts
for those exact bytes. What depends on the environment (another package's symlink above one
of this payload's folders) is checked each time from the folders the verdict lists.

A verdict lives in the download cache, which only its owner can write (`pack.fetch` refuses
any other), and is trusted only if it is a regular file there that only its owner can write.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pixi_deploy.pack.archives import Archive, ArchiveSlice

#: Bump whenever the rules in `pack.untar` change: older verdicts are then ignored.
RULES_VERSION = 1
SUFFIX = ".checked.json"


@dataclass(frozen=True)
class Verdict:
    """The payload passed, with these declared symlinks; its members lie in ``folders``."""

    declared: tuple[str, ...]
    folders: tuple[str, ...]


def _path(archive: Archive) -> Path | None:
    if isinstance(archive, ArchiveSlice) and archive.whole and archive.sha256:
        return archive.pack.with_name(archive.pack.name + SUFFIX)
    return None  # a slice of a pack, or an archive nobody vouched for: always checked in full


def load(archive: Archive) -> Verdict | None:
    path = _path(archive)
    if path is None:
        return None
    try:
        info = os.lstat(path)
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid not in (os.geteuid(), 0)
            or info.st_mode & 0o022
            or info.st_size > 16 << 20
        ):
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    assert isinstance(archive, ArchiveSlice)
    if (
        not isinstance(data, dict)
        or data.get("rules") != RULES_VERSION
        or data.get("sha256") != archive.sha256
        or not _strings(data.get("declared"))
        or not _strings(data.get("folders"))
    ):
        return None
    return Verdict(tuple(data["declared"]), tuple(data["folders"]))


def save(archive: Archive, verdict: Verdict) -> None:
    """Best effort: a cache that cannot be written just means checking in full next time."""
    path = _path(archive)
    if path is None:
        return
    assert isinstance(archive, ArchiveSlice)
    body = {
        "rules": RULES_VERSION,
        "sha256": archive.sha256,
        "declared": sorted(verdict.declared),
        "folders": sorted(verdict.folders),
    }
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".verdict-")
    except OSError:
        return
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        Path(tmp).unlink(missing_ok=True)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
