"""What a conda package may hold, checked before anything of it is installed, whoever installs it.

The direct installer (`pack.direct`, `pack.untar`) checks payload members as it writes them;
this module holds the checks that concern a whole package or a whole prefix, and the full check
of a package that goes to py-rattler instead (``.tar.bz2``, ``noarch: python``, clobbering
packages). rattler trusts ``paths.json``: an entry ``/abs/path`` made it panic (a Rust abort),
``../x`` made it patch a file outside the prefix. So rattler is only ever given a package whose
every name, member and symlink passed the same rules as the direct path, and its result gets
the same modes (`harden_modes`).
"""

from __future__ import annotations

import bz2
import json
import os
import stat
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import zstandard

from pixi_deploy.pack.archives import Archive, ArchiveSlice, open_archive
from pixi_deploy.pack.confined import (
    MODE_MASK,
    ConfinedFolder,
    UnsafeMember,
    check_name,
    resolve_link,
)
from pixi_deploy.pack.untar import WINDOW, UnusualMember, check_members, scan_payload, zstd_reader

#: paths.json, link.json and the old info/files: a package's whole file list is a few MB at most.
MAX_INFO_FILE = 64 << 20
_INFO_FILES = ("info/paths.json", "info/link.json", "info/files", "info/has_prefix")
_PATH_TYPES = ("hardlink", "softlink", "directory")


def refuse(package: str, error: UnsafeMember | UnusualMember) -> UnsafeMember | UnusualMember:
    """The same error, saying which package it is about."""
    return type(error)(f"package {package}: {error.message}", error.hint)


def checked_paths(raw: bytes, package: str) -> list[dict[str, Any]]:
    """paths.json's entries, each name checked (and normalised: no ``./``)."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise refuse(package, UnusualMember("info/paths.json is not valid JSON")) from None
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, list):
        raise refuse(package, UnusualMember("info/paths.json has no list of paths"))
    for entry in paths:
        if not isinstance(entry, dict) or not isinstance(entry.get("_path"), str):
            raise refuse(package, UnusualMember("info/paths.json has an entry without a path"))
        try:
            entry["_path"] = check_name(entry["_path"])
        except UnsafeMember as error:
            raise refuse(package, UnsafeMember(f"info/paths.json: {error.message}")) from None
        kind = entry.get("path_type", "hardlink")
        placeholder = entry.get("prefix_placeholder")
        if not isinstance(kind, str) or not isinstance(placeholder, str | None):
            raise refuse(package, UnusualMember(f"info/paths.json: {entry['_path']} is malformed"))
        if placeholder is not None and not isinstance(entry.get("file_mode"), str):
            raise refuse(
                package, UnusualMember(f"info/paths.json: {entry['_path']} lacks file_mode")
            )
    return paths


def check_symlinks(
    symlinks: Mapping[str, str], final: str, owners: Mapping[str, str] | None = None
) -> None:
    """Every symlink of a prefix (name -> target) must end up inside it, following the others
    the way the kernel would: a link into ``/etc`` is refused, and so is ``d -> .`` with
    ``e -> d/..``. ``final`` is where the prefix will live. ``owners``: name -> package, for
    the message."""
    table = dict(symlinks)
    for name, target in table.items():
        if resolve_link(name, target, table, final) is None:
            shown = target if len(target) <= 80 else target[:40] + "..." + target[-37:]
            error = UnsafeMember(f"the symlink {name} -> {shown} points outside the environment")
            owner = (owners or {}).get(name)
            raise refuse(owner, error) if owner else error


def check_for_rattler(archive: Archive, package: str) -> dict[str, str]:
    """Read the whole package (info and payload) and refuse it unless every member passes the
    rules of `pack.untar`; returns its symlinks. The archive is verified first."""
    if isinstance(archive, ArchiveSlice):
        archive.verify()
    buffer = bytearray(WINDOW)
    try:
        with open_archive(archive) as source:
            if archive.name.endswith(".conda"):
                members, info = _conda_members(source, buffer, package)
            elif archive.name.endswith(".tar.bz2"):
                with bz2.BZ2File(source) as stream:
                    members, info = scan_payload(stream, buffer, _INFO_FILES, MAX_INFO_FILE)
            else:
                raise UnusualMember("is neither a .conda nor a .tar.bz2 archive")
        declared = _declared_symlinks(info, package)
        _check_entry_points(info.get("info/link.json"), package)
        return check_members(members, declared)
    except (UnsafeMember, UnusualMember) as error:
        raise refuse(package, error) from None
    except (OSError, EOFError, zipfile.BadZipFile, zstandard.ZstdError) as error:
        raise refuse(package, UnusualMember(f"cannot be read ({error})")) from None


def _conda_members(
    source: Any, buffer: bytearray, package: str
) -> tuple[list[Any], dict[str, bytes]]:
    """Both tars of a ``.conda`` (rattler extracts them into one folder)."""
    members: list[Any] = []
    info: dict[str, bytes] = {}
    with zipfile.ZipFile(source) as zf:
        names = [n for n in zf.namelist() if n.endswith(".tar.zst")]
        for name in sorted(names, key=lambda n: not n.startswith("info-")):
            with zf.open(name) as raw:
                found, captured = scan_payload(zstd_reader(raw), buffer, _INFO_FILES, MAX_INFO_FILE)
            members += found
            info.update(captured)
    return members, info


def _declared_symlinks(info: Mapping[str, bytes], package: str) -> set[str]:
    """The package's symlinks by paths.json; old packages without one list names in info/files
    (and info/has_prefix), which are checked the same way."""
    if "info/paths.json" in info:
        paths = checked_paths(info["info/paths.json"], package)
        return {e["_path"] for e in paths if e.get("path_type") == "softlink"}
    for listing in ("info/files", "info/has_prefix"):
        for line in info.get(listing, b"").decode("utf-8", "surrogateescape").splitlines():
            name = line.rsplit(" ", 1)[-1] if listing == "info/has_prefix" else line
            if name.strip():
                check_name(name.strip())
    return set()


def _check_entry_points(raw: bytes | None, package: str) -> None:
    """noarch python entry points become files in bin/: their names must be plain names."""
    if raw is None:
        return
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UnusualMember("info/link.json is not valid JSON") from None
    noarch = data.get("noarch") if isinstance(data, dict) else None
    points = noarch.get("entry_points", []) if isinstance(noarch, dict) else []
    for point in points if isinstance(points, list) else []:
        name = str(point).split("=", 1)[0].strip()
        if "/" in name or check_name(name) != name:
            raise UnsafeMember(f"the entry point {name!r} is not a plain file name")


def harden_modes(staging: str, names: Iterable[str]) -> None:
    """What rattler wrote, given the modes `pack.untar` gives: no world-write, no setuid,
    setgid or sticky bit (rattler keeps an archive's 0777 and 4755)."""
    with ConfinedFolder(staging) as tree:
        for name in names:
            try:
                info = tree.lstat(name)
            except FileNotFoundError:
                continue
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode) or mode & ~MODE_MASK == 0:
                continue
            if not stat.S_ISREG(info.st_mode) and not stat.S_ISDIR(info.st_mode):
                raise UnsafeMember(f"{name} is not a regular file, folder or symlink")
            where, base = tree.locate(name, create=False)
            fd = os.open(base, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=where)
            try:
                os.fchmod(fd, mode & MODE_MASK)
            finally:
                os.close(fd)
