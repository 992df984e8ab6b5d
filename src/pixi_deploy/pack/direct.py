"""Install ``.conda`` archives straight into a prefix, each file written once.

Why not always ``rattler.install``: rattler extracts every archive into a package cache and then
hard-links the files into the prefix. That is the right design for a machine that keeps its cache
(pixi, and our own deploys, which reuse the download cache's extraction), but ``unpack`` runs once
on a machine with no cache: there it creates every file twice over (cache, then link), then has to
delete the cache again, which made unpack 2.2x ``tar -x`` of the same tree.

So for the common case, a ``.conda`` package that is not ``noarch: python``, this module writes
the payload tar straight into the prefix (`pack.writers` and `pack.untar`: the archive is read
where it lies, in chunks), patches the files that carry a prefix placeholder, and
writes ``conda-meta/<pkg>.json`` as rattler would. Everything else (``.tar.bz2``, ``noarch:
python`` with its site-packages remapping and entry points, packages whose paths overlap
another's, shebangs that would outgrow the kernel's limit) is handed back to the caller for
``rattler.install``, which sees the packages installed here as already present. The archives
must already be verified against the lock.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import rattler
import zstandard

from pixi_deploy.errors import PackError
from pixi_deploy.pack import verdicts
from pixi_deploy.pack.archives import (
    Archive,
    ArchiveSlice,
    archive_size,
    open_archive,
    open_range,
)
from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember, is_beneath
from pixi_deploy.pack.guard import MAX_INFO_FILE, check_symlinks, checked_paths, refuse
from pixi_deploy.pack.linking import DirectPackage, Linker
from pixi_deploy.pack.untar import (
    WINDOW,
    UnusualMember,
    extract_payload,
    read_bounded,
    read_members,
)
from pixi_deploy.pack.writers import INLINE_BELOW_BYTES, PackageWriters, configured_workers

#: Top-level names the remote store uses in a staging folder (store/payloads.py): a deferred
#: payload may not hold them, or it could forge another package's object or marker.
RESERVED_NAMES = (".pd-objects", ".pd-staged")


@dataclass(frozen=True)
class DeferredPayload:
    """A package whose bulk was not written: its payload tar (zstd) lies at ``offset`` in
    ``archive``, to be extracted elsewhere (the remote store does it on the cluster). Files that
    embed the prefix, symlinks and conda-meta were written as usual, so the staged prefix plus
    this payload, with the staged files winning, is the installed package. Every member of the
    payload was checked here (`pack.untar`), and the archive's sha256 with it."""

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
    symlinks: dict[str, str] = field(default_factory=dict)  # made, name -> target


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
    direct: list[DirectPackage] = []
    left: list[rattler.RepoDataRecord] = []
    for record in records:
        package = _read_package_checked(record, archives[record.file_name])
        if package is None or package.payload_at is None:
            left.append(record)
        else:
            direct.append(package)
    if _conflicting(direct):
        return DirectResult(list(records), [])
    if not direct:
        return DirectResult(left, [])
    staging.mkdir(parents=True, exist_ok=True)
    linker = Linker(staging, final)
    deferred: list[DeferredPayload] = []
    every_symlink = frozenset(path for package in direct for path in package.symlinks)
    made: dict[str, str] = {}
    owners: dict[str, str] = {}
    try:
        for package in direct:
            symlinks = _extract_prefix_specific(package, staging, every_symlink)
            owners.update(dict.fromkeys(symlinks, package.record.file_name))
            check_symlinks({**made, **symlinks}, str(final), owners)  # before any of it is sent
            made.update(symlinks)
            if linker.link(package, symlinks):
                deferred.append(_deferred(package))
                if on_deferred is not None:  # e.g. to start sending it while the rest is laid out
                    on_deferred(deferred[-1])
        _make_symlinks(staging, made)
    finally:
        linker.close()
    return DirectResult(_in_order(left + linker.given_back, records), deferred, made)


def _install_written(
    records: Sequence[rattler.RepoDataRecord],
    archives: Mapping[str, Archive],
    staging: Path,
    final: Path,
    workers: int | None,
) -> DirectResult:
    """Every package's payload written here, by `pack.writers` processes, biggest first (by
    this process when there is little to write)."""
    small = sum(archive_size(archives[r.file_name]) for r in records) < INLINE_BELOW_BYTES
    if workers is None and configured_workers() is None and small:
        workers = 0
    staging.mkdir(parents=True, exist_ok=True)
    linker = Linker(staging, final)
    try:
        with PackageWriters(staging, workers, _read_package_checked, linker.link) as writers:
            for record in sorted(records, key=lambda r: -archive_size(archives[r.file_name])):
                writers.submit(record, archives[record.file_name])
            writers.wait()
        if _conflicting(writers.packages):
            shutil.rmtree(staging)
            staging.mkdir()
            return DirectResult(list(records), [])
        check_symlinks(writers.symlinks, str(final), writers.symlink_owners)
        _make_symlinks(staging, writers.symlinks)
    finally:
        linker.close()
    return DirectResult(
        _in_order(writers.unreadable + linker.given_back, records), [], writers.symlinks
    )


class StreamedDirect:
    """`install_direct` for archives that arrive one after another (a pack read from a stream):
    each is written as soon as it is there and its file removed once it is linked, so only a
    few archives are ever on disk beside the environment. Those the direct path hands back
    (for rattler) are kept. Two packages owning one path cannot be left to rattler here (their
    archives are gone): that is refused, with a hint to unpack from a file."""

    def __init__(self, staging: Path, final: Path, workers: int | None = None) -> None:
        staging.mkdir(parents=True, exist_ok=True)
        self.staging, self.final = staging, final
        self.linker = Linker(staging, final)
        try:
            self.writers = PackageWriters(staging, workers, _read_package_checked, self.linker.link)
        except BaseException:
            self.linker.close()
            raise
        self.writers.on_linked = _remove_archive

    def __enter__(self) -> StreamedDirect:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        self.writers.__exit__(kind, None, None)
        self.linker.close()

    def add(self, record: rattler.RepoDataRecord, archive: Path) -> None:
        """Start writing one verified archive; returns once few enough are left unwritten."""
        self.writers.submit(record, archive)
        self.writers.pump(self.writers.capacity)

    def finish(self, records: Sequence[rattler.RepoDataRecord]) -> DirectResult:
        writers = self.writers
        writers.wait()
        # first: a symlink out of the environment is the problem to name, whatever else
        check_symlinks(writers.symlinks, str(self.final), writers.symlink_owners)
        if _conflicting(writers.packages):
            raise PackError(
                "two packages of this pack own the same path, which only an unpack from a file "
                "can sort out (rattler's clobber rules need every archive)",
                "save the pack to a file, then run `pixi-deploy unpack FILE DIR`",
            )
        _make_symlinks(self.staging, writers.symlinks)
        left = _in_order(writers.unreadable + self.linker.given_back, records)
        return DirectResult(left, [], writers.symlinks)


def _remove_archive(package: DirectPackage) -> None:
    if isinstance(package.archive, Path):
        package.archive.unlink(missing_ok=True)


def _make_symlinks(staging: Path, symlinks: Mapping[str, str]) -> None:
    """Made last, once every file is written and every target checked: nothing is ever written
    through one, and one beneath another is refused (`pack.confined`)."""
    with ConfinedFolder(staging) as tree:
        for name, target in symlinks.items():
            tree.symlink(name, target)


def _in_order(
    subset: Sequence[rattler.RepoDataRecord], records: Sequence[rattler.RepoDataRecord]
) -> list[rattler.RepoDataRecord]:
    order = {id(record): i for i, record in enumerate(records)}
    return sorted(subset, key=lambda record: order[id(record)])


def _deferred(package: DirectPackage) -> DeferredPayload:
    assert package.payload_at is not None
    offset, size = package.payload_at
    path, base = (
        (package.archive.pack, package.archive.offset)
        if isinstance(package.archive, ArchiveSlice)
        else (package.archive, 0)
    )
    installed = sum(int(e.get("size_in_bytes") or 0) for e in package.paths)
    specific = _prefix_specific(package)
    shared = tuple(
        e["_path"]
        for e in package.paths
        if e.get("path_type", "hardlink") == "hardlink" and e["_path"] not in specific
    )
    folders = tuple(sorted({os.path.dirname(e["_path"]) for e in package.paths} - {""}))
    return DeferredPayload(package.record, path, base + offset, size, installed, shared, folders)


def _read_package_checked(record: rattler.RepoDataRecord, archive: Archive) -> DirectPackage | None:
    """An archive that cannot be read is corrupt (say so); a hostile one is refused."""
    try:
        return _read_package(record, archive)
    except (UnsafeMember, UnusualMember) as error:
        if isinstance(archive, ArchiveSlice):
            archive.verify()  # a corrupt pack says so rather than blame the package
        raise refuse(record.file_name, error) from None
    except (zipfile.BadZipFile, zstandard.ZstdError, tarfile.TarError, ValueError, KeyError):
        if isinstance(archive, ArchiveSlice):
            archive.verify()
        return None


#: Read while laying out (activate.sh is written from them), so staged even when deferred.
_ACTIVATION = ("etc/conda/activate.d/", "etc/conda/env_vars.d/")


def _prefix_specific(package: DirectPackage) -> set[str]:
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


def _extract_prefix_specific(
    package: DirectPackage, staging: Path, every_symlink: frozenset[str]
) -> dict[str, str]:
    """Verify the archive, check every member of its payload (or find that a verdict already
    says it passed, `pack.verdicts`), and write only what differs per prefix (the rest is
    shipped as it is); returns the payload's symlinks, not made yet."""
    assert package.payload_at is not None
    offset, size = package.payload_at
    verdict = verdicts.load(package.archive)
    known = verdict is not None and set(verdict.declared) == set(package.symlinks)
    folders: set[str] = set()
    try:
        if known:
            assert verdict is not None
            for folder in verdict.folders:  # what depends on the rest of the environment
                above = folder if folder in every_symlink else is_beneath(folder, every_symlink)
                if above is not None:
                    raise UnsafeMember(f"{folder} lies beneath the symlink {above}")
        if isinstance(package.archive, ArchiveSlice):
            package.archive.verify()
        with open_range(package.archive, offset, size) as payload:
            symlinks = extract_payload(
                payload,
                str(staging),
                declared_symlinks=package.symlinks,
                all_symlinks=every_symlink,
                buffer=bytearray(WINDOW),
                wanted=_prefix_specific(package),
                reserved=RESERVED_NAMES,
                stop_early=known,
                folders_out=folders,
            )
    except (UnsafeMember, UnusualMember) as error:
        raise refuse(package.record.file_name, error) from None
    except zstandard.ZstdError as error:
        raise refuse(
            package.record.file_name, UnusualMember(f"cannot be decompressed ({error})")
        ) from None
    if not known:
        verdicts.save(package.archive, verdicts.Verdict(tuple(package.symlinks), tuple(folders)))
    return symlinks


def _read_package(record: rattler.RepoDataRecord, archive: Archive) -> DirectPackage | None:
    """The package's paths.json (every name checked), or None when it must go through rattler."""
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
    paths = checked_paths(info_files["info/paths.json"], record.file_name)
    index = json.loads(info_files["info/index.json"])
    if not isinstance(index, dict) or index.get("noarch") == "python":
        return None
    for entry in paths:
        if entry.get("path_type", "hardlink") not in ("hardlink", "softlink", "directory"):
            return None
        if entry.get("prefix_placeholder") and entry.get("file_mode") not in ("text", "binary"):
            return None
    return DirectPackage(record, archive, payload, paths, payload_at)


def _small_members(raw: IO[bytes], wanted: set[str]) -> dict[str, bytes]:
    """Members of a package's info tar (zstd), read within a bound: a package is untrusted."""
    data = read_bounded(
        zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True), MAX_INFO_FILE
    )
    try:
        return read_members(data, wanted)
    except UnusualMember:  # tarfile reads what our reader does not (only reads: no extraction)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            found: dict[str, bytes] = {}
            for member in tar:
                if member.name in wanted and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    found[member.name] = source.read()
            return found


def _conflicting(packages: Sequence[DirectPackage]) -> bool:
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
