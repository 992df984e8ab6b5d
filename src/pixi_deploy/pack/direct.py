"""Install ``.conda`` archives straight into a prefix, each file written once.

Why not always ``rattler.install``: rattler extracts every archive into a package cache and then
hard-links the files into the prefix. That is the right design for a machine that keeps its cache
(pixi, and our own deploys, which reuse the download cache's extraction), but ``unpack`` runs once
on a machine with no cache: there it creates every file twice over (cache, then link), then has to
delete the cache again, which made unpack 2.2x ``tar -x`` of the same tree.

So for the common case, a ``.conda`` package that is not ``noarch: python``, this module writes
the payload tar straight into the prefix (`pack.writers` and `pack.untar`: the archive is read
where it lies, mapped into memory), patches the files that carry a prefix placeholder, and
writes ``conda-meta/<pkg>.json`` as rattler would. Everything else (``.tar.bz2``, ``noarch:
python`` with its site-packages remapping and entry points, packages whose paths overlap
another's, shebangs that would outgrow the kernel's limit) is handed back to the caller for
``rattler.install``, which sees the packages installed here as already present. The archives
must already be verified against the lock.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, Any, BinaryIO

import rattler
import zstandard

from pixi_deploy.errors import PackError
from pixi_deploy.pack.archives import Archive, ArchiveSlice, archive_size, open_archive
from pixi_deploy.pack.untar import UnusualMember, read_members
from pixi_deploy.pack.writers import PackageWriters

#: Linux refuses to exec a script whose ``#!`` line is longer than this.
MAX_SHEBANG = 127
_CHUNK = 1 << 20


@dataclass
class _Package:
    record: rattler.RepoDataRecord
    archive: Archive
    payload_member: str
    paths: list[dict[str, Any]]
    payload_at: tuple[int, int] | None  # (offset, size) in the archive; None if zip-compressed

    @cached_property
    def symlinks(self) -> frozenset[str]:
        return frozenset(e["_path"] for e in self.paths if e.get("path_type") == "softlink")


@dataclass(frozen=True)
class DeferredPayload:
    """A package whose bulk was not written: its payload tar (zstd) lies at ``offset`` in
    ``archive``, to be extracted elsewhere (the remote store does it on the cluster). Files that
    embed the prefix, symlinks and conda-meta were written as usual, so the staged prefix plus
    this payload, with the staged files winning, is the installed package."""

    record: rattler.RepoDataRecord
    archive: Path
    offset: int
    size: int
    installed_bytes: int
    shared_files: tuple[str, ...]  # the payload's files that are the same under every prefix
    folders: tuple[str, ...] = ()  # every folder the payload's files and links go in


@dataclass
class DirectResult:
    left: list[rattler.RepoDataRecord]  # for rattler, in their original order
    deferred: list[DeferredPayload]


def install_direct(
    records: Sequence[rattler.RepoDataRecord],
    archives: Mapping[str, Archive],
    *,
    staging: Path,
    final: Path,
    workers: int | None = None,
    defer_payloads: bool = False,
    on_deferred: Callable[[DeferredPayload], object] | None = None,
) -> DirectResult:
    """Install into ``staging`` (made for ``final``) what can be installed directly; the rest is
    left for rattler. ``defer_payloads`` writes only what differs per prefix (see
    `DeferredPayload`) and returns where each package's payload lies."""
    if not defer_payloads:
        return _install_written(records, archives, staging, final, workers)
    direct: list[_Package] = []
    left: list[rattler.RepoDataRecord] = []
    for record in records:
        package = _read_package_checked(record, archives[record.file_name])
        if package is None or package.payload_at is None or not isinstance(package.archive, Path):
            left.append(record)
        else:
            direct.append(package)
    if _conflicting(direct):
        return DirectResult(list(records), [])
    if not direct:
        return DirectResult(left, [])
    staging.mkdir(parents=True, exist_ok=True)
    linker = _Linker(staging, final)
    deferred: list[DeferredPayload] = []
    for package in direct:
        _extract_members(package, staging, _prefix_specific(package))
        if linker.link(package):
            deferred.append(_deferred(package))
            if on_deferred is not None:  # e.g. to start sending it while the rest is laid out
                on_deferred(deferred[-1])
    return DirectResult(_in_order(left + linker.given_back, records), deferred)


def _install_written(
    records: Sequence[rattler.RepoDataRecord],
    archives: Mapping[str, Archive],
    staging: Path,
    final: Path,
    workers: int | None,
) -> DirectResult:
    """Every package's payload written here, by `pack.writers` processes, biggest first."""
    staging.mkdir(parents=True, exist_ok=True)
    linker = _Linker(staging, final)
    with PackageWriters(staging, workers, _read_package_checked, linker.link) as writers:
        for record in sorted(records, key=lambda r: -archive_size(archives[r.file_name])):
            writers.submit(record, archives[record.file_name])
        writers.wait()
        if _conflicting(writers.packages):
            shutil.rmtree(staging)
            staging.mkdir()
            return DirectResult(list(records), [])
        writers.make_symlinks()
    for package in writers.unusual:
        _remove_files(staging, package)
        _extract_with_tarfile([package], staging)  # tarfile's own checks, slowly
        linker.link(package)
    return DirectResult(_in_order(writers.unreadable + linker.given_back, records), [])


def _in_order(
    subset: Sequence[rattler.RepoDataRecord], records: Sequence[rattler.RepoDataRecord]
) -> list[rattler.RepoDataRecord]:
    order = {id(record): i for i, record in enumerate(records)}
    return sorted(subset, key=lambda record: order[id(record)])


class _Linker:
    """Patches a written package's placeholders and writes its conda-meta record; a package
    whose shebang would outgrow the kernel's limit is taken back out, for rattler."""

    def __init__(self, staging: Path, final: Path) -> None:
        self.staging = staging
        self.prefix = str(final).encode()
        self.meta = staging / "conda-meta"
        self.meta.mkdir(exist_ok=True)
        (self.meta / "history").touch()
        self.given_back: list[rattler.RepoDataRecord] = []

    def link(self, package: _Package, symlinks: Mapping[str, str] | None = None) -> bool:
        """``symlinks``: the package's symlinks when they are not made yet (path -> target)."""
        try:
            entries = [
                _link_entry(self.staging, entry, self.prefix, symlinks) for entry in package.paths
            ]
        except _LongShebang:
            _remove_files(self.staging, package)  # rattler rewrites such shebangs
            self.given_back.append(package.record)
            return False
        _write_prefix_record(self.meta, package, entries)
        return True


def _deferred(package: _Package) -> DeferredPayload:
    assert package.payload_at is not None and isinstance(package.archive, Path)
    offset, size = package.payload_at
    installed = sum(int(e.get("size_in_bytes") or 0) for e in package.paths)
    specific = _prefix_specific(package)
    shared = tuple(
        e["_path"]
        for e in package.paths
        if e.get("path_type", "hardlink") == "hardlink" and e["_path"] not in specific
    )
    folders = tuple(sorted({os.path.dirname(e["_path"]) for e in package.paths} - {""}))
    return DeferredPayload(
        package.record, package.archive, offset, size, installed, shared, folders
    )


def _verify(archive: Archive) -> None:
    if isinstance(archive, ArchiveSlice):
        archive.verify()


def _read_package_checked(record: rattler.RepoDataRecord, archive: Archive) -> _Package | None:
    """An archive that cannot be read is either corrupt (say so) or unusual (rattler's then)."""
    try:
        return _read_package(record, archive)
    except (zipfile.BadZipFile, zstandard.ZstdError, tarfile.TarError, ValueError, KeyError):
        _verify(archive)
        return None


#: Read while laying out (activate.sh is written from them), so staged even when deferred.
_ACTIVATION = ("etc/conda/activate.d/", "etc/conda/env_vars.d/")


def _prefix_specific(package: _Package) -> set[str]:
    """The payload members that differ per prefix, that conda-meta describes by content, or
    that the activation script is written from."""
    return {
        e["_path"]
        for e in package.paths
        if e.get("prefix_placeholder")
        or e.get("path_type") == "softlink"
        or e["_path"].startswith(_ACTIVATION)
    }


def _stored_at(source: BinaryIO, info: zipfile.ZipInfo) -> tuple[int, int] | None:
    """Where a stored (uncompressed) zip member's bytes lie: a .conda's members always are."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    source.seek(info.header_offset)
    header = source.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        return None
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _extract_members(package: _Package, staging: Path, wanted: set[str]) -> None:
    """Only ``wanted`` members, stopping as soon as all are out (they tend to come early)."""
    if not wanted:
        return
    remaining = set(wanted)
    with _payload_tar(package) as tar:
        for member in tar:
            if member.name in remaining:
                tar.extract(member, staging, filter="tar")
                remaining.discard(member.name)
                if not remaining:
                    return


@contextmanager
def _payload_tar(package: _Package) -> Iterator[tarfile.TarFile]:
    """The package's payload (the zstd-compressed tar inside the ``.conda``), read in order."""
    with (
        open_archive(package.archive) as source,
        zipfile.ZipFile(source) as zf,
        zf.open(package.payload_member) as raw,
    ):
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            yield tar


def _remove_files(staging: Path, package: _Package) -> None:
    for entry in package.paths:
        path = staging / entry["_path"]
        if path.is_symlink() or path.is_file():
            path.unlink()


def _read_package(record: rattler.RepoDataRecord, archive: Archive) -> _Package | None:
    """The package's paths.json, or None when it must go through rattler."""
    if not archive.name.endswith(".conda"):
        return None
    with open_archive(archive) as source, zipfile.ZipFile(source) as zf:
        names = zf.namelist()
        info = next((n for n in names if n.startswith("info-") and n.endswith(".tar.zst")), None)
        payload = next((n for n in names if n.startswith("pkg-") and n.endswith(".tar.zst")), None)
        if info is None or payload is None:
            return None
        with zf.open(info) as raw:
            info_files = _small_members(raw, {"info/paths.json", "info/index.json"})
        payload_at = _stored_at(source, zf.getinfo(payload))
    if "info/paths.json" not in info_files or "info/index.json" not in info_files:
        return None
    index = json.loads(info_files["info/index.json"])
    if index.get("noarch") == "python":
        return None
    paths = json.loads(info_files["info/paths.json"]).get("paths")
    if not isinstance(paths, list):
        return None
    for entry in paths:
        if entry.get("path_type", "hardlink") not in ("hardlink", "softlink", "directory"):
            return None
        if entry.get("prefix_placeholder") and entry.get("file_mode") not in ("text", "binary"):
            return None
    return _Package(record, archive, payload, paths, payload_at)


def _small_members(raw: IO[bytes], wanted: set[str]) -> dict[str, bytes]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(raw.read())
    try:
        return read_members(data, wanted)
    except UnusualMember:  # tarfile reads what our reader does not
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            found: dict[str, bytes] = {}
            for member in tar:
                if member.name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    found[member.name] = source.read()
            return found


def _conflicting(packages: Sequence[_Package]) -> bool:
    """Two packages owning one path, or one with files beneath another's symlink: rare, and
    rattler's clobber rules decide what then happens, so it gets every package."""
    seen: set[str] = set()
    for package in packages:
        for entry in package.paths:
            path = entry["_path"]
            if path in seen:
                return True
            seen.add(path)
    symlinks = {path for package in packages for path in package.symlinks}
    if not symlinks:
        return False
    parents = {path.rpartition("/")[0] for path in seen}
    while parents:
        if parents & symlinks:
            return True
        parents = {parent.rpartition("/")[0] for parent in parents} - {""}
    return False


def _extract_with_tarfile(packages: Sequence[_Package], staging: Path) -> None:
    """What `pack.untar` leaves (unusual members): slower, with tarfile's own safety filter.
    The archives were checked against their sha256 already."""
    for package in packages:
        with _payload_tar(package) as tar:
            tar.extractall(staging, filter="tar")


# --------------------------------------------------------------------------------------------
# Linking: prefix placeholders and conda-meta
# --------------------------------------------------------------------------------------------


def _link_entry(
    staging: Path, entry: dict[str, Any], prefix: bytes, symlinks: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The conda-meta paths entry for one file, after patching its placeholder if it has one."""
    out: dict[str, Any] = {
        "_path": entry["_path"],
        "path_type": entry.get("path_type", "hardlink"),
    }
    if "sha256" in entry:
        out["sha256"] = entry["sha256"]
    placeholder = entry.get("prefix_placeholder")
    if out["path_type"] == "softlink":  # rattler hashes the link's target, as written
        path = entry["_path"]
        recorded = symlinks.get(path) if symlinks is not None else None
        target = (recorded if recorded is not None else os.readlink(staging / path)).encode()
        out["sha256_in_prefix"] = hashlib.sha256(target).hexdigest()
    if placeholder:
        data = _patch(staging / entry["_path"], placeholder.encode(), prefix, entry["file_mode"])
        out["sha256_in_prefix"] = hashlib.sha256(data).hexdigest()
        out["size_in_bytes"] = len(data)
        out["file_mode"] = entry["file_mode"]
        out["prefix_placeholder"] = placeholder
    elif "size_in_bytes" in entry:
        out["size_in_bytes"] = entry["size_in_bytes"]
    if entry.get("no_link"):
        out["no_link"] = True
    return out


def _patch(path: Path, placeholder: bytes, prefix: bytes, mode: str) -> bytes:
    data = path.read_bytes()
    if placeholder not in data:
        return data
    new = replace_text(data, placeholder, prefix) if mode == "text" else None
    if new is None:
        new = replace_cstrings(data, placeholder, prefix, path)
    temporary = path.with_name(path.name + ".pixi-deploy-patch")
    temporary.write_bytes(new)
    os.chmod(temporary, path.stat().st_mode & 0o7777)
    os.replace(temporary, path)
    return new


def replace_text(data: bytes, placeholder: bytes, prefix: bytes) -> bytes:
    """Plain replacement, as conda does for text files. A ``#!`` line that the new prefix
    would make longer than the kernel accepts raises: rattler rewrites such lines."""
    new = data.replace(placeholder, prefix)
    if new.startswith(b"#!"):
        first_line = new.split(b"\n", 1)[0]
        if len(first_line) > MAX_SHEBANG and placeholder in data.split(b"\n", 1)[0]:
            raise _LongShebang()
    return new


class _LongShebang(Exception):
    pass


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


def _write_prefix_record(meta: Path, package: _Package, entries: list[dict[str, Any]]) -> None:
    record = json.loads(package.record.to_json())
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
