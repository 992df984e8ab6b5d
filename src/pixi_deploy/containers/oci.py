"""OCI images without an engine: a content-addressed blob store, reproducible layer tars, and the
three outputs (OCI layout folder, oci-archive, docker-archive), written with json/hashlib/tarfile
(the fourth, the rootfs as a squashfs, takes umoci and mksquashfs: squashfs_output.py).

A layer is a tar with sorted entries, mtime 0 (or ``SOURCE_DATE_EPOCH``), uid/gid 0, no user
names and normalised modes (0755 for directories and executables, 0644 otherwise), compressed by
a gzip stream whose header carries no name or time: the same files always give the same digest,
whatever the umask, clock or machine of the build.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from pixi_deploy.errors import ContainerError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
#: Docker media types -> their OCI twins (same bytes, so the digests stay valid).
TO_OCI = {
    DOCKER_MANIFEST: MANIFEST,
    DOCKER_LIST: INDEX,
    DOCKER_CONFIG: CONFIG,
    DOCKER_LAYER_GZIP: LAYER_GZIP,
    DOCKER_LAYER_TAR: LAYER_TAR,
}
REF_NAME = "org.opencontainers.image.ref.name"
#: conda platform -> (os, architecture, variant) of the OCI image config.
PLATFORMS = {
    "linux-64": ("linux", "amd64", None),
    "linux-aarch64": ("linux", "arm64", "v8"),
    "linux-ppc64le": ("linux", "ppc64le", None),
    "linux-s390x": ("linux", "s390x", None),
    "linux-armv7l": ("linux", "arm", "v7"),
}
CHUNK = 1 << 20


def oci_platform(platform: str) -> tuple[str, str, str | None]:
    try:
        return PLATFORMS[platform]
    except KeyError:
        known = ", ".join(PLATFORMS)
        raise ContainerError(
            f"no OCI image can be built for platform '{platform}'", f"use one of {known}"
        ) from None


def source_date_epoch() -> int:
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(raw) if raw.isdigit() else 0


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        data["size"] = self.size
        if self.platform:
            data["platform"] = self.platform
        if self.annotations:
            data["annotations"] = dict(sorted(self.annotations.items()))
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Descriptor:
        return cls(
            TO_OCI.get(data["mediaType"], data["mediaType"]),
            data["digest"],
            int(data["size"]),
            dict(data.get("annotations") or {}),
            data.get("platform"),
        )

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


class _Hashing(io.RawIOBase):
    """A write-only stream that counts and hashes what passes through to ``target``."""

    def __init__(self, target: BinaryIO | None) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += len(view)
        if self.target is not None:
            self.target.write(view)
        return len(view)


class BlobStore:
    """``<root>/sha256/<hex>`` files, each verified once on the way in and moved in atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        algorithm, _, hex_ = digest.partition(":")
        return self.root / algorithm / hex_

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    @contextmanager
    def writer(self) -> Iterator[tuple[BinaryIO, _Hashing]]:
        """Yield (file, hasher); write through the hasher; the blob lands under its digest."""
        folder = self.root / "sha256"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".part-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                hasher = _Hashing(out)
                yield out, hasher
            os.chmod(tmp, 0o644)
            os.replace(tmp, folder / hasher.digest.hexdigest())
        finally:
            tmp.unlink(missing_ok=True)

    def add_bytes(self, data: bytes, media_type: str) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if not self.has(digest):
            with self.writer() as (_, hasher):
                hasher.write(data)
        return Descriptor(media_type, digest, len(data))

    def add_file(self, source: Path, expected: str | None = None) -> str:
        """Copy a file in (hardlink when possible); return its digest."""
        if expected is not None and self.has(expected):
            return expected
        with self.writer() as (_, hasher), source.open("rb") as src:
            while chunk := src.read(CHUNK):
                hasher.write(chunk)
        digest = "sha256:" + hasher.digest.hexdigest()
        if expected is not None and digest != expected:
            self.path(digest).unlink(missing_ok=True)
            raise ContainerError(
                f"blob {source} does not match its digest {expected[:19]}…",
                "the base image is corrupt; fetch it again",
            )
        return digest

    def read(self, digest: str) -> bytes:
        try:
            return self.path(digest).read_bytes()
        except OSError as error:
            raise ContainerError(f"blob {digest[:19]}… is missing from {self.root}") from error


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class FileEntry:
    """One entry of a layer: ``source`` on disk (None for a directory or ``data``)."""

    name: str  # path inside the image, without the leading slash
    source: Path | None = None
    data: bytes | None = None
    mode: int | None = None


@dataclass(frozen=True)
class Layer:
    descriptor: Descriptor
    diff_id: str


def entries_under(root: Path, relative: Iterable[str], image_dir: PurePosixPath) -> list[FileEntry]:
    """FileEntries for ``relative`` paths of ``root`` placed under ``image_dir`` in the image."""
    base = str(image_dir).strip("/")
    return [FileEntry(f"{base}/{rel}", root / rel) for rel in relative]


def write_layer(
    store: BlobStore, entries: Iterable[FileEntry], *, compression: str, epoch: int
) -> Layer:
    """A reproducible layer of ``entries`` (+ every parent folder), sorted by name."""
    by_name = {e.name.strip("/"): e for e in entries}
    for name in list(by_name):
        parent = PurePosixPath(name).parent
        while str(parent) not in (".", "/", "") and str(parent) not in by_name:
            by_name[str(parent)] = FileEntry(str(parent))
            parent = parent.parent
    media_type = LAYER_GZIP if compression == "gzip" else LAYER_TAR
    with store.writer() as (_, compressed):
        raw: Any = compressed
        gz = None
        if compression == "gzip":
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0, compresslevel=6)
            raw = gz
        plain = _Hashing(raw)
        buffered = io.BufferedWriter(plain, CHUNK)
        with tarfile.open(fileobj=buffered, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(by_name):
                _add_entry(tar, by_name[name], name, epoch)
        buffered.flush()
        if gz is not None:
            gz.close()
    digest = "sha256:" + compressed.digest.hexdigest()
    return Layer(
        Descriptor(media_type, digest, compressed.size), "sha256:" + plain.digest.hexdigest()
    )


def _add_entry(tar: tarfile.TarFile, entry: FileEntry, name: str, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = epoch
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.data is not None:
        info.size = len(entry.data)
        info.mode = entry.mode if entry.mode is not None else 0o644
        tar.addfile(info, io.BytesIO(entry.data))
        return
    if entry.source is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        return
    st = entry.source.lstat()
    if stat.S_ISLNK(st.st_mode):
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(entry.source)
        info.mode = 0o777
        tar.addfile(info)
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    elif stat.S_ISREG(st.st_mode):
        info.size = st.st_size
        info.mode = 0o755 if st.st_mode & 0o111 else 0o644
        with entry.source.open("rb") as source:
            tar.addfile(info, source)
    # sockets, fifos and devices have no place in an environment: left out


@dataclass(frozen=True)
class BuiltImage:
    """An image whose blobs are all in ``store``: layers, config and manifest."""

    store: BlobStore
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]

    def blobs(self) -> list[Descriptor]:
        return [*self.layers, self.config]


# -- reading an OCI layout (a base image) --------------------------------------------------


def read_layout(
    folder: Path, tag: str | None, platform: str, store: BlobStore
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(manifest, config) of ``tag`` in an OCI layout folder; its blobs are copied into ``store``."""
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise ContainerError(f"{folder} is not an OCI image layout (no index.json)", "check --base")
    index = json.loads(index_path.read_text())
    candidates = index.get("manifests") or []
    if tag is not None:
        candidates = [m for m in candidates if (m.get("annotations") or {}).get(REF_NAME) == tag]
    if not candidates:
        raise ContainerError(f"no image tagged '{tag}' in {folder}", "check --base DIR:TAG")
    if len(candidates) > 1:
        candidates = [m for m in candidates if _matches(m.get("platform"), platform)] or candidates
    descriptor = Descriptor.from_json(candidates[0])

    def read(digest: str) -> bytes:
        ensure(digest)
        return store.read(digest)

    def ensure(digest: str) -> None:
        store.add_file(folder / "blobs" / digest.replace(":", "/"), digest)

    return resolve_manifest(descriptor, read, ensure, platform)


def resolve_manifest(
    descriptor: Descriptor,
    read: Callable[[str], bytes],
    ensure: Callable[[str], None],
    platform: str,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Follow an index to the manifest for ``platform``; fetch its config and every layer."""
    manifest = json.loads(read(descriptor.digest))
    media_type = TO_OCI.get(manifest.get("mediaType", descriptor.media_type), descriptor.media_type)
    if media_type == INDEX or "manifests" in manifest:
        chosen = [m for m in manifest.get("manifests", []) if _matches(m.get("platform"), platform)]
        if not chosen:
            raise ContainerError(
                f"the base image has no variant for {'/'.join(oci_platform(platform)[:2])}",
                "pick a base image published for the target platform",
            )
        return resolve_manifest(Descriptor.from_json(chosen[0]), read, ensure, platform)
    config = json.loads(read(manifest["config"]["digest"]))
    for layer in manifest.get("layers", []):
        ensure(layer["digest"])
    return manifest, config


def _matches(spec: dict[str, Any] | None, platform: str) -> bool:
    if not spec:
        return False
    os_, arch, _ = oci_platform(platform)
    return bool(spec.get("os") == os_ and spec.get("architecture") == arch)
