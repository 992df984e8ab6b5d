"""The layers of an environment image: which files each package owns, how packages are grouped
into layers (one per package; above the budget, the largest alone and the rest in stable
name buckets), the layer cache, and loading a base image.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import rattler

from pixi_deploy.activation import ManifestActivation
from pixi_deploy.channels import redact
from pixi_deploy.containers.oci import (
    TO_OCI,
    BlobStore,
    Descriptor,
    Layer,
    canonical,
    entries_under,
    read_layout,
    write_layer,
)
from pixi_deploy.containers.reference import find_credentials, parse_reference
from pixi_deploy.containers.registry import pull_base
from pixi_deploy.errors import ContainerError
from pixi_deploy.pack.confined import UnsafeMember, extract_tar

LAYER_FORMAT = 1  # bump when the bytes of a package layer would change for the same package
BUCKETS = 16


@dataclass(frozen=True)
class LayerInfo:
    digest: str
    size: int
    packages: tuple[str, ...]
    cached: bool


@dataclass
class LayerSource:
    """What an image is built from, whether a lock + download cache or a pack."""

    environment: str
    platform: str
    lock_hash: str
    workspace: str
    python_version: str | None
    records: list[rattler.RepoDataRecord]
    archives: dict[str, Path]
    sha256: dict[str, str]  # archive/wheel file name -> sha256
    wheels: list[Path]
    activation: ManifestActivation | None = None  # the manifest's part of activate.sh
    needs: tuple[str, ...] = ()  # the lock's virtual packages, checked by activate.sh
    verify: bool = False  # check each archive against ``sha256`` where it is used (a cache)


def load_base(
    base: str, platform: str, store: BlobStore, work: Path, insecure: bool
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """(manifest, config, name) of the base image; ({}, {}, None) for scratch."""
    text = base.strip()
    if text in ("", "scratch"):
        return {}, {}, None
    kind, path_text, tag = _base_kind(text)
    if kind == "registry":
        ref = parse_reference(path_text)
        creds = find_credentials(ref.registry, None)  # the user's registry auth, as for push
        try:
            manifest, config = pull_base(ref, store, platform, creds, insecure=insecure)
        except ContainerError as error:
            raise ContainerError(
                f"cannot pull the base image {ref}: {error.message}",
                "pass --base with an image you can pull, or a local OCI layout or archive "
                "(docker/skopeo can save one)",
            ) from error
        return manifest, config, str(ref)
    folder = Path(path_text)
    if kind == "oci-archive":
        folder = work / "base"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(path_text) as tar:
                extract_tar(tar, folder)  # never tarfile's own filter: see pack/confined.py
        except (OSError, tarfile.TarError, UnsafeMember) as error:
            raise ContainerError(f"cannot read the base archive {path_text}: {error}") from error
    manifest, config = read_layout(folder, tag, platform, store)
    for layer in manifest.get("layers", []):
        layer["mediaType"] = TO_OCI.get(layer["mediaType"], layer["mediaType"])
    return manifest, config, text


def _base_kind(text: str) -> tuple[str, str, str | None]:
    for scheme in ("oci-archive:", "oci:"):
        if text.startswith(scheme):
            rest = text[len(scheme) :]
            path, _, tag = rest.partition(":")
            return scheme.rstrip(":"), path, tag or None
    if text.startswith("docker://"):
        return "registry", text[len("docker://") :], None
    candidates: list[tuple[str, str | None]] = [(text, None)]
    if ":" in text:
        head, _, tail = text.rpartition(":")
        candidates.append((head, tail))
    for location, location_tag in candidates:
        if Path(location).exists():
            kind = "oci" if Path(location).is_dir() else "oci-archive"
            return kind, location, location_tag
    return "registry", text, None


def package_files(
    staging: Path, source: LayerSource, urls: dict[str, Any]
) -> tuple[dict[str, tuple[str, list[str]]], list[str]]:
    """package -> (sha256, files it owns); and the paths no package owns (for the top layer)."""
    owned: dict[str, tuple[str, list[str]]] = {}
    claimed: set[str] = set()
    meta = staging / "conda-meta"
    for record_file in sorted(meta.glob("*.json")) if meta.is_dir() else []:
        data = json.loads(record_file.read_text())
        fn = data.get("fn", "")
        files = [
            f for f in data.get("files", []) if (staging / f).is_symlink() or (staging / f).exists()
        ]
        # build-machine paths mean nothing in the image: record where the package came from
        data["url"] = redact(str(urls.get(fn, data.get("url", ""))))  # no credentials in layers
        data["extracted_package_dir"] = ""
        record_file.write_text(json.dumps(data, indent=2))
        owned[fn] = (source.sha256.get(fn, fn), files)
        claimed.update(files)
    for wheel in source.wheels:
        files = _wheel_files(staging, wheel, source.python_version)
        owned[wheel.name] = (source.sha256.get(wheel.name, wheel.name), files)
        claimed.update(files)
    unowned = []
    for root, dirs, names in os.walk(staging):
        rel_root = Path(root).relative_to(staging)
        for name in names + [d for d in dirs if (Path(root) / d).is_symlink()]:
            rel = str(rel_root / name) if str(rel_root) != "." else name
            if rel not in claimed:
                unowned.append(rel)
        if not dirs and not names and str(rel_root) != ".":
            unowned.append(str(rel_root))  # an empty folder
    return owned, sorted(unowned)


def _wheel_files(staging: Path, wheel: Path, python_version: str | None) -> list[str]:
    name, version = wheel.name.split("-")[:2]
    site = staging / f"lib/python{python_version}/site-packages"
    record = site / f"{name}-{version}.dist-info" / "RECORD"
    if not record.is_file():
        return []  # the files then go to the top layer: correct, only less granular
    files = []
    for line in record.read_text().splitlines():
        path = line.split(",", 1)[0]
        full = os.path.normpath(site / path)
        rel = os.path.relpath(full, staging)
        if not rel.startswith("..") and os.path.lexists(full):
            files.append(rel)
    return files


def package_layers(
    store: BlobStore,
    staging: Path,
    prefix: PurePosixPath,
    owned: dict[str, tuple[str, list[str]]],
    budget: int,
    source: LayerSource,
    compression: str,
    epoch: int,
) -> tuple[list[Layer], list[LayerInfo]]:
    """One layer per package; above ``budget`` the largest alone, the rest in name buckets."""

    def size(files: list[str]) -> int:
        return sum((staging / f).lstat().st_size for f in files)

    names = sorted(owned, key=lambda n: (-size(owned[n][1]), n))
    if len(names) <= budget:
        groups = [[n] for n in sorted(names)]
    else:
        buckets = max(1, min(BUCKETS, budget // 4))
        alone = [[n] for n in sorted(names[: max(0, budget - buckets)])]
        shared: dict[int, list[str]] = {}
        for n in names[max(0, budget - buckets) :]:
            shared.setdefault(zlib.crc32(stem(n).encode()) % buckets, []).append(n)
        groups = alone + [sorted(g) for _, g in sorted(shared.items())]
    index = store.root.parent / "layers"
    index.mkdir(parents=True, exist_ok=True)
    layers, infos = [], []
    for group in groups:
        key = canonical(
            {
                "format": LAYER_FORMAT,
                "prefix": str(prefix),
                "platform": source.platform,
                "python": source.python_version,
                "compression": compression,
                "epoch": epoch,
                "packages": sorted(owned[n][0] for n in group),
            }
        )
        key_file = index / f"{hashlib.sha256(key).hexdigest()}.json"
        layer = _cached_layer(store, key_file)
        was_cached = layer is not None
        if layer is None:
            entries = entries_under(staging, [f for n in group for f in owned[n][1]], prefix)
            layer = write_layer(store, entries, compression=compression, epoch=epoch)
            key_file.write_text(
                json.dumps(
                    {
                        "digest": layer.descriptor.digest,
                        "size": layer.descriptor.size,
                        "media_type": layer.descriptor.media_type,
                        "diff_id": layer.diff_id,
                    }
                )
            )
        layers.append(layer)
        infos.append(
            LayerInfo(
                layer.descriptor.digest,
                layer.descriptor.size,
                tuple(stem(n) for n in group),
                was_cached,
            )
        )
    return layers, infos


def _cached_layer(store: BlobStore, key_file: Path) -> Layer | None:
    try:
        data = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return None
    if not store.has(data["digest"]):
        return None
    return Layer(Descriptor(data["media_type"], data["digest"], data["size"]), data["diff_id"])


def stem(filename: str) -> str:
    for suffix in (".conda", ".tar.bz2", ".whl"):
        if filename.endswith(suffix):
            return filename[: -len(suffix)]
    return filename
