"""py-rattler's own install of a lock is the reference every install path must match.

`reference_install` installs the records with ``rattler.install`` at a path of the same length
as the path under test; `compare_trees` replaces the reference's prefix with ours in the bytes of
every file, then compares the two trees file by file: names, bytes, executable bits and symlink
targets, and the ``files`` / ``paths_data`` of every ``conda-meta`` record.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

import rattler

#: What pixi-deploy adds to an environment on purpose (rattler's own bookkeeping aside).
OURS = {"activate.sh", "deployment_metadata.json"}
#: rattler's bookkeeping that is not part of the environment's content.
RATTLERS = {"CACHEDIR.TAG", "conda-meta/history", "conda-meta/pixi"}


def same_length_path(parent: Path, length: int, stem: str = "ref") -> Path:
    """A new path under ``parent`` exactly ``length`` characters long."""
    base = f"{parent}/{stem}"
    if len(base) > length:
        raise ValueError(f"{parent} is too long for a path of {length} characters")
    return Path(base + "x" * (length - len(base)))


def reference_install(
    records: Sequence[rattler.RepoDataRecord], prefix: Path, cache_dir: Path
) -> Path:
    asyncio.run(
        rattler.install(
            list(records),
            target_prefix=prefix,
            cache_dir=cache_dir,
            show_progress=False,
            execute_link_scripts=False,
        )
    )
    return prefix


def _walk(root: Path, skip: Iterable[str]) -> dict[str, Path]:
    skipped = set(skip)
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if rel in skipped or (rel.startswith("conda-meta/") and rel.endswith(".json")):
                continue
            if path.is_symlink() or not path.is_dir():
                found[rel] = path
    return found


def compare_trees(
    ours: Path,
    reference: Path,
    *,
    our_prefix: str | None = None,
    skip: Iterable[str] = (),
) -> list[str]:
    """Differences between ``ours`` (an environment made for ``our_prefix``, default its own
    path) and the reference; [] when they agree file by file."""
    our_prefix = our_prefix or str(ours)
    ref_prefix = str(reference)
    assert len(our_prefix) == len(ref_prefix), (our_prefix, ref_prefix)
    mine = _walk(ours, OURS | RATTLERS | set(skip))
    theirs = _walk(reference, OURS | RATTLERS | set(skip))
    problems = [f"only in ours: {p}" for p in sorted(set(mine) - set(theirs))]
    problems += [f"missing from ours: {p}" for p in sorted(set(theirs) - set(mine))]
    old, new = ref_prefix.encode(), our_prefix.encode()
    for rel in sorted(set(mine) & set(theirs)):
        a, b = mine[rel], theirs[rel]
        if a.is_symlink() or b.is_symlink():
            if not (a.is_symlink() and b.is_symlink()):
                problems.append(f"{rel}: symlink in only one tree")
            elif os.readlink(a) != os.readlink(b).replace(ref_prefix, our_prefix):
                problems.append(f"{rel}: symlink {os.readlink(a)!r} vs {os.readlink(b)!r}")
            continue
        if a.read_bytes() != b.read_bytes().replace(old, new):
            problems.append(f"{rel}: content differs")
        if _executable(a) != _executable(b):
            problems.append(f"{rel}: executable bit {_executable(a)} vs {_executable(b)}")
    problems += _compare_meta(ours, reference, ref_prefix, our_prefix)
    return problems


def _executable(path: Path) -> bool:
    return bool(path.stat().st_mode & stat.S_IXUSR)


def _compare_meta(ours: Path, reference: Path, ref_prefix: str, our_prefix: str) -> list[str]:
    problems = []
    mine = {p.name for p in (ours / "conda-meta").glob("*.json")}
    theirs = {p.name for p in (reference / "conda-meta").glob("*.json")}
    if mine != theirs:
        problems.append(f"conda-meta records differ: {sorted(mine ^ theirs)}")
    for name in sorted(mine & theirs):
        a = json.loads((ours / "conda-meta" / name).read_text())
        b = json.loads((reference / "conda-meta" / name).read_text())
        if sorted(a.get("files", [])) != sorted(b.get("files", [])):
            problems.append(f"conda-meta/{name}: files differ")
        pa = {e["_path"]: _entry(e, ours) for e in a.get("paths_data", {}).get("paths", [])}
        pb = {e["_path"]: _entry(e, reference) for e in b.get("paths_data", {}).get("paths", [])}
        if pa != pb:
            diff = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
            problems.append(f"conda-meta/{name}: paths_data differ at {diff[:5]}")
    return problems


def _entry(entry: dict[str, object], prefix: Path) -> dict[str, object]:
    """A paths_data entry, where the sha256_in_prefix of a patched file (which differs with the
    prefix by design) is replaced by whether it is the sha256 of the file in that prefix."""
    kept = dict(entry)
    if entry.get("prefix_placeholder") and "sha256_in_prefix" in entry:
        path = prefix / str(entry["_path"])
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
        kept["sha256_in_prefix"] = entry["sha256_in_prefix"] == actual
    return kept
