"""Split a laid-out environment into content-addressed groups, so redeploys move only what changed.

An environment's prefix is content-addressed, so every file that embeds the prefix path differs
between two versions of an environment; every other file is identical to what the cluster already
holds if its package is unchanged. So the files are split into:

- one **group per package** (conda package or wheel): its files that do not embed the prefix,
  keyed by the sha256 of their (path, mode, sha256) list. Stored once per cluster under
  ``BASE/objects/<key>/`` and hard-linked into every environment that uses it.
- the **environment part**: files that embed the prefix, symlinks, directories, activation and
  metadata files. Small, and shipped with every new environment.

A change to one package then moves that package's bytes plus the (small) environment part.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

SCAN_CHUNK = 1 << 20


@dataclass(frozen=True)
class FileEntry:
    rel: str
    size: int
    sha256: str
    mode: int  # 0o755 or 0o644


@dataclass
class Group:
    name: str
    files: list[FileEntry] = field(default_factory=list)

    @cached_property
    def key(self) -> str:
        """Read only once the plan is complete (it is cached)."""
        lines = sorted(f"{f.rel}\0{f.mode:o}\0{f.sha256}" for f in self.files)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:32]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class EnvironmentPart:
    """What is specific to one environment: shipped every time, never shared."""

    files: list[FileEntry] = field(default_factory=list)
    symlinks: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Plan:
    groups: list[Group]
    env: EnvironmentPart

    @property
    def total_bytes(self) -> int:
        return sum(g.size for g in self.groups) + self.env.size


def plan(prefix: Path, final_prefix: str, shipped_raw: Collection[str] = ()) -> Plan:
    """Group the files under ``prefix`` (laid out for ``final_prefix``).

    ``shipped_raw`` names conda-meta records (file stems) whose payload travels as it is
    (store/payloads.py): their files get no group here (what of them is staged, the
    prefix-embedding files and symlinks, goes to the environment part); only their record does,
    when it is the same in every environment."""
    owners: dict[str, Group] = {}
    claimed: dict[str, FileEntry] = {}
    env = EnvironmentPart()
    groups: list[Group] = []
    needle = final_prefix.encode()

    for record_file in sorted((prefix / "conda-meta").glob("*.json")):
        raw = record_file.stem in shipped_raw
        record = json.loads(record_file.read_text())
        group = Group(record_file.stem)
        portable = True
        for entry in record.get("paths_data", {}).get("paths", []):
            if entry.get("path_type", "hardlink") != "hardlink" or "prefix_placeholder" in entry:
                portable = False
                continue  # embeds the prefix (or is a link): environment part, found by the walk
            if raw:
                continue  # its bulk travels as the package's payload
            rel = entry["_path"]
            path = prefix / rel
            if not path.is_file() or path.is_symlink():
                continue
            info = path.stat()
            file = FileEntry(rel, info.st_size, entry["sha256"], _mode(info.st_mode))
            group.files.append(file)
            claimed[rel] = file
            owners[rel] = group
        meta_rel = f"conda-meta/{record_file.name}"
        if portable and needle not in record_file.read_bytes():
            info = record_file.stat()
            meta = FileEntry(meta_rel, info.st_size, _sha256(record_file), 0o644)
            group.files.append(meta)
            claimed[meta_rel] = meta
        groups.append(group)

    wheel_groups = _wheel_groups(prefix)
    for root, dirnames, filenames in os.walk(prefix):
        dirnames.sort()
        base = Path(root)
        rel_root = base.relative_to(prefix).as_posix()
        if rel_root != ".":
            env.dirs.append(rel_root)
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / name
            rel = path.relative_to(prefix).as_posix()
            if path.is_symlink():
                env.symlinks[rel] = os.readlink(path)
                continue
            if rel in claimed:
                continue
            info = path.stat()
            digest, embeds_prefix = _scan(path, needle)
            file = FileEntry(rel, info.st_size, digest, _mode(info.st_mode))
            wheel = wheel_groups.get(rel)
            if wheel is not None and not embeds_prefix:
                wheel.files.append(file)
            else:
                env.files.append(file)
    groups.extend(g for g in _unique(wheel_groups.values()) if g.files)
    return Plan([g for g in groups if g.files], env)


def _wheel_groups(prefix: Path) -> dict[str, Group]:
    """rel path -> group of the wheel that installed it (from each dist-info RECORD)."""
    result: dict[str, Group] = {}
    for record in prefix.glob("lib/python*/site-packages/*.dist-info/RECORD"):
        site = record.parent.parent
        group = Group(record.parent.name)
        for line in record.read_text().splitlines():
            path_part = line.split(",", 1)[0]
            if not path_part:
                continue
            target = (site / path_part).resolve()
            try:
                rel = target.relative_to(prefix.resolve()).as_posix()
            except ValueError:
                continue
            result[rel] = group
    return result


def _unique(groups: Iterable[Group]) -> list[Group]:
    seen: dict[int, Group] = {}
    for group in groups:
        seen.setdefault(id(group), group)
    return list(seen.values())


def _scan(path: Path, needle: bytes) -> tuple[str, bool]:
    digest = hashlib.sha256()
    found = False
    tail = b""
    with path.open("rb") as source:
        while chunk := source.read(SCAN_CHUNK):
            digest.update(chunk)
            if not found:
                found = needle in tail + chunk
                tail = chunk[-len(needle) :]
    return digest.hexdigest(), found


def _sha256(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def _mode(st_mode: int) -> int:
    return 0o755 if st_mode & stat.S_IXUSR else 0o644
