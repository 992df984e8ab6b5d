"""Link a written package into its prefix as rattler would: patch its prefix placeholders and
write its ``conda-meta/<pkg>.json``.

Every file is read and rewritten through `pack.confined`, by the names paths.json gives (checked
when it was read): a patched file gets a new inode beside the old one and replaces it in one
rename, so neither a symlink nor a hard link to something else is ever written through.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import rattler

from pixi_deploy.channels import redact
from pixi_deploy.errors import PackError
from pixi_deploy.pack.archives import Archive
from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember

#: Linux refuses to exec a script whose ``#!`` line is longer than this.
MAX_SHEBANG = 127


@dataclass
class DirectPackage:
    """A ``.conda`` package the direct installer writes: its record, archive and paths.json."""

    record: rattler.RepoDataRecord
    archive: Archive
    payload_member: str
    paths: list[dict[str, Any]]  # names checked (`pack.guard.checked_paths`)
    payload_at: tuple[int, int] | None  # (offset, size) in the archive; None if zip-compressed

    @cached_property
    def symlinks(self) -> frozenset[str]:
        return frozenset(e["_path"] for e in self.paths if e.get("path_type") == "softlink")

    @cached_property
    def listed(self) -> frozenset[str]:
        """Every path paths.json lists: all that may land in a prefix. Real payloads carry more
        (``info/licenses/...``, ``info/test/``, ``info/recipe/``), which conda and rattler never
        link into an environment."""
        return frozenset(e["_path"] for e in self.paths)


class LongShebang(Exception):
    """A ``#!`` line the new prefix would push past `MAX_SHEBANG`: rattler rewrites those."""


class Linker:
    """Patches a written package's placeholders and writes its conda-meta record; a package
    whose shebang would outgrow the kernel's limit is taken back out, for rattler."""

    def __init__(self, staging: Path, final: Path) -> None:
        self.staging = staging
        self.tree = ConfinedFolder(staging)
        self.prefix = str(final).encode()
        self.meta = staging / "conda-meta"
        self.meta.mkdir(exist_ok=True)
        (self.meta / "history").touch()
        self.given_back: list[rattler.RepoDataRecord] = []

    def close(self) -> None:
        self.tree.close()

    def link(self, package: DirectPackage, symlinks: Mapping[str, str] | None = None) -> bool:
        """``symlinks``: the package's symlinks when they are not made yet (path -> target)."""
        try:
            entries = [self._entry(entry, symlinks) for entry in package.paths]
        except LongShebang:
            self.remove_files(package)  # rattler rewrites such shebangs
            self.given_back.append(package.record)
            return False
        write_prefix_record(self.meta, package, entries)
        return True

    def remove_files(self, package: DirectPackage) -> None:
        for entry in package.paths:
            self.tree.remove(entry["_path"])

    def _entry(self, entry: dict[str, Any], symlinks: Mapping[str, str] | None) -> dict[str, Any]:
        """The conda-meta paths entry for one file, after patching its placeholder if it has one."""
        path = entry["_path"]
        out: dict[str, Any] = {"_path": path, "path_type": entry.get("path_type", "hardlink")}
        if "sha256" in entry:
            out["sha256"] = entry["sha256"]
        placeholder = entry.get("prefix_placeholder")
        if out["path_type"] == "softlink":  # rattler hashes the link's target, as written
            target = symlinks.get(path) if symlinks is not None else None
            if target is None:
                try:
                    target = self.tree.readlink(path)
                except OSError:
                    raise UnsafeMember(
                        f"paths.json declares {path} a symlink, but the package holds none"
                    ) from None
            out["sha256_in_prefix"] = hashlib.sha256(target.encode()).hexdigest()
        if placeholder:
            data = self._patch(path, placeholder.encode(), entry["file_mode"])
            out["sha256_in_prefix"] = hashlib.sha256(data).hexdigest()
            out["size_in_bytes"] = len(data)
            out["file_mode"] = entry["file_mode"]
            out["prefix_placeholder"] = placeholder
        elif "size_in_bytes" in entry:
            out["size_in_bytes"] = entry["size_in_bytes"]
        if entry.get("no_link"):
            out["no_link"] = True
        return out

    def _patch(self, path: str, placeholder: bytes, mode: str) -> bytes:
        try:
            data = self.tree.read_bytes(path)
        except FileNotFoundError:
            raise UnsafeMember(
                f"paths.json lists {path}, which the package does not hold"
            ) from None
        if placeholder not in data:
            return data
        new = replace_text(data, placeholder, self.prefix) if mode == "text" else None
        if new is None:
            new = replace_cstrings(data, placeholder, self.prefix, Path(path))
        self.tree.replace_bytes(path, new)
        return new


def replace_text(data: bytes, placeholder: bytes, prefix: bytes) -> bytes:
    """Plain replacement, as conda does for text files. A ``#!`` line that the new prefix
    would make longer than the kernel accepts raises: rattler rewrites such lines."""
    new = data.replace(placeholder, prefix)
    if new.startswith(b"#!"):
        first_line = new.split(b"\n", 1)[0]
        if len(first_line) > MAX_SHEBANG and placeholder in data.split(b"\n", 1)[0]:
            raise LongShebang()
    return new


def replace_cstrings(data: bytes, placeholder: bytes, prefix: bytes, path: Path) -> bytes:
    """Binary files: each NUL-terminated string holding the placeholder is rewritten in place and
    padded with NULs, so every offset in the file stays where the linker put it."""
    if len(prefix) > len(placeholder):
        raise PackError(
            f"the path {prefix.decode()} is longer than the {len(placeholder)} characters "
            f"the binary file {path.name} reserves for it",
            "choose a shorter target path",
        )
    out = io.BytesIO()
    position = 0
    while (start := data.find(placeholder, position)) != -1:
        end = data.find(b"\0", start)
        end = len(data) if end == -1 else end
        segment = data[start:end]
        replaced = segment.replace(placeholder, prefix)
        out.write(data[position:start])
        out.write(replaced)
        out.write(b"\0" * (len(segment) - len(replaced)))
        position = end
    out.write(data[position:])
    return out.getvalue()


def write_prefix_record(meta: Path, package: DirectPackage, entries: list[dict[str, Any]]) -> None:
    record = json.loads(package.record.to_json())
    for key in ("url", "channel"):  # credentials stay in memory, never in a prefix
        if isinstance(record.get(key), str):
            record[key] = redact(record[key])
    record.update(
        {
            "extracted_package_dir": "",
            "requested_specs": [],
            "files": [e["_path"] for e in entries],
            "paths_data": {"paths_version": 1, "paths": entries},
            "link": {"source": "", "type": 1},
        }
    )
    name = f"{package.record.name.normalized}-{package.record.version}-{package.record.build}"
    (meta / f"{name}.json").write_text(json.dumps(record))
