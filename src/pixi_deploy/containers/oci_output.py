"""Write a built image as an OCI layout folder, an oci-archive or a docker-archive (docker save).

Only json, hashlib and tarfile: archives are written to a temporary file beside the destination
and renamed into place, and an OCI layout folder gets its blobs first and its index.json last.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pixi_deploy.containers.oci import INDEX, MANIFEST, REF_NAME, BuiltImage, Descriptor
from pixi_deploy.errors import ContainerError


def _link_or_copy(source: Path, target: Path) -> None:
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def write_oci_dir(image: BuiltImage, dest: Path, tag: str) -> Path:
    """Add the image to an OCI layout folder (created if needed) under the ref name ``tag``.

    Other tags already in the folder stay; the index is replaced atomically, last.
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        layout = dest / "oci-layout"
        if not layout.exists():
            layout.write_text('{"imageLayoutVersion":"1.0.0"}')
        for blob in [*image.blobs(), image.manifest]:
            _link_or_copy(image.store.path(blob.digest), dest / "blobs" / "sha256" / blob.hex)
        index_path = dest / "index.json"
        manifests: list[dict[str, Any]] = []
        if index_path.is_file():
            manifests = [
                m
                for m in json.loads(index_path.read_text()).get("manifests", [])
                if (m.get("annotations") or {}).get(REF_NAME) != tag
            ]
        entry = Descriptor(
            MANIFEST, image.manifest.digest, image.manifest.size, {REF_NAME: tag}
        ).to_json()
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [*manifests, entry]}
        tmp = dest / ".index.json.tmp"
        tmp.write_text(json.dumps(index, indent=2))
        os.replace(tmp, index_path)
    except OSError as error:
        raise ContainerError(
            f"cannot write the OCI layout {dest}: {error.strerror}", "pick another --dest"
        ) from error
    return dest


def _tar_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _tar_blob(tar: tarfile.TarFile, image: BuiltImage, blob: Descriptor) -> None:
    path = image.store.path(blob.digest)
    info = tarfile.TarInfo(f"blobs/sha256/{blob.hex}")
    info.size, info.mode, info.mtime = path.stat().st_size, 0o644, 0
    with path.open("rb") as source:
        tar.addfile(info, source)


@contextmanager
def _atomic_tar(dest: Path) -> Iterator[tarfile.TarFile]:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            yield tar
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except OSError as error:
        raise ContainerError(
            f"cannot write {dest}: {error.strerror}", "pick another --dest"
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_oci_archive(image: BuiltImage, dest: Path, tag: str) -> Path:
    """A tar of an OCI layout holding only this image (``skopeo ... oci-archive:FILE``)."""
    with _atomic_tar(dest) as tar:
        _layout_members(tar, image, tag)
    return dest


def _layout_members(tar: tarfile.TarFile, image: BuiltImage, tag: str) -> None:
    _tar_bytes(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    entry = Descriptor(MANIFEST, image.manifest.digest, image.manifest.size, {REF_NAME: tag})
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [entry.to_json()]}
    _tar_bytes(tar, "index.json", json.dumps(index, indent=2).encode())
    seen: set[str] = set()
    for blob in [image.manifest, image.config, *image.layers]:
        if blob.digest not in seen:
            seen.add(blob.digest)
            _tar_blob(tar, image, blob)


def write_docker_archive(image: BuiltImage, dest: Path, repo_tag: str) -> Path:
    """`docker save` format: manifest.json + config + layer files (inside an OCI layout, as
    Docker 25+ writes it, so `docker load`, `podman load` and skopeo all read it)."""
    with _atomic_tar(dest) as tar:
        _layout_members(tar, image, repo_tag)
        manifest = [
            {
                "Config": f"blobs/sha256/{image.config.hex}",
                "RepoTags": [repo_tag],
                "Layers": [f"blobs/sha256/{layer.hex}" for layer in image.layers],
            }
        ]
        _tar_bytes(tar, "manifest.json", json.dumps(manifest).encode())
    return dest
