"""One conda package of any size (gigabytes), written as a stream: what benchmarks and tests
use to check that memory does not grow with the package (issue 18).

`pixi_deploy.testing.channel` renders a package's files in memory, which is right for a realistic
mix of small packages and wrong for a 3 GB CUDA-like one. Here the payload is a few big files
(``file_size`` each, like the shared libraries of a CUDA package), made of 1 MiB random blocks
in an order that never repeats within zstd's window: practically incompressible (as such
libraries nearly are, once compressed), yet cheap to produce. The tar is written through zstd
into the ``.conda`` zip as it is generated, each file's sha256 computed on the way for
``paths.json``; nothing is held in memory but one block.
"""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import zstandard

from pixi_deploy.testing.channel import FIXED_EPOCH

BLOCK = 1 << 20
_BLOCKS = 17  # a prime: block k of file i is _pool[(i * 7 + k) % 17]; repeats 17 MiB apart


@dataclass
class LargePackage:
    name: str
    payload_bytes: int
    file_size: int = 256 << 20
    version: str = "1.0.0"
    build: str = "h0_0"
    subdir: str = "linux-64"
    seed: int = 0
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> size, sha256

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def filename(self) -> str:
        return self.stem + ".conda"


class _Generated:
    """A file's bytes, produced as they are read, hashed on the way."""

    def __init__(self, pool: list[bytes], index: int, size: int) -> None:
        self.pool, self.index, self.left, self.position = pool, index, size, 0
        self.sha256 = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        parts: list[bytes] = []
        while want > 0:
            block, within = divmod(self.position, BLOCK)
            data = self.pool[(self.index * 7 + block) % _BLOCKS][within : within + want]
            parts.append(data)
            want -= len(data)
            self.position += len(data)
        chunk = b"".join(parts)
        self.left -= len(chunk)
        self.sha256.update(chunk)
        return chunk


def build_large_package(package: LargePackage, channel_dir: Path) -> Path:
    """Write ``package`` into ``channel_dir/<subdir>/`` (index the channel afterwards with
    `pixi_deploy.testing.channel.index_channel`); returns the archive's path."""
    rng = random.Random(package.seed)  # noqa: S311 (test data, not a secret)
    pool = [rng.randbytes(BLOCK) for _ in range(_BLOCKS)]
    out_dir = channel_dir / package.subdir
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / package.filename
    tmp = target.with_name(target.name + ".part")
    sizes: list[int] = []
    left = package.payload_bytes
    while left > 0:
        sizes.append(min(left, package.file_size))
        left -= sizes[-1]
    big = package.payload_bytes > (1 << 31)
    with tmp.open("wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED) as zf:
        with zf.open(_zip_info("metadata.json"), "w") as out:
            out.write(json.dumps({"conda_pkg_format_version": 2}).encode())
        with zf.open(_zip_info(f"pkg-{package.stem}.tar.zst"), "w", force_zip64=big) as out:
            _write_payload(out, package, pool, sizes)
        with zf.open(_zip_info(f"info-{package.stem}.tar.zst"), "w") as out:
            _write_info(out, package)
    tmp.replace(target)
    return target


def _write_payload(
    out: IO[bytes], package: LargePackage, pool: list[bytes], sizes: list[int]
) -> None:
    compressor = zstandard.ZstdCompressor(level=1)
    with (
        compressor.stream_writer(out, closefd=False) as zw,
        tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.copybufsize = BLOCK  # type: ignore[attr-defined]
        for i, size in enumerate(sizes):
            path = f"lib/{package.name}/lib{package.name}-{i:03d}.so"
            info = _tar_info(path, size)
            source = _Generated(pool, i, size)
            tar.addfile(info, source)
            package.files[path] = (size, source.sha256.hexdigest())


def _write_info(out: IO[bytes], package: LargePackage) -> None:
    paths = [
        {"_path": path, "path_type": "hardlink", "sha256": sha, "size_in_bytes": size}
        for path, (size, sha) in sorted(package.files.items())
    ]
    index = {
        "build": package.build,
        "build_number": 0,
        "constrains": [],
        "depends": [],
        "license": "BSD-3-Clause",
        "name": package.name,
        "subdir": package.subdir,
        "timestamp": FIXED_EPOCH * 1000,
        "version": package.version,
        "platform": "linux",
        "arch": "x86_64" if package.subdir == "linux-64" else "aarch64",
    }
    members = {
        "info/index.json": json.dumps(index, indent=2, sort_keys=True).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode(),
        "info/files": "".join(p["_path"] + "\n" for p in paths).encode(),  # type: ignore[operator]
    }
    with (
        zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as zw,
        tarfile.open(fileobj=zw, mode="w|", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path, data in sorted(members.items()):
            tar.addfile(_tar_info(path, len(data)), _Bytes(data))


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, n: int = -1) -> bytes:
        chunk, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return chunk


def _tar_info(path: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.size, info.mtime, info.mode = size, FIXED_EPOCH, 0o755
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.create_system = 3
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_STORED
    return info


def index_large_packages(channel_dir: Path, packages: list[LargePackage]) -> Path:
    """A channel's ``repodata.json`` for large packages only, written here: rattler's indexer
    reads every archive whole (about 50 s per GB), this only hashes each once."""
    by_subdir: dict[str, dict[str, object]] = {"noarch": {}}
    for package in packages:
        archive = channel_dir / package.subdir / package.filename
        sha256, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 (repodata's own field)
        with archive.open("rb") as source:
            while chunk := source.read(BLOCK * 8):
                sha256.update(chunk)
                md5.update(chunk)
        by_subdir.setdefault(package.subdir, {})[package.filename] = {
            "build": package.build,
            "build_number": 0,
            "depends": [],
            "license": "BSD-3-Clause",
            "md5": md5.hexdigest(),
            "name": package.name,
            "sha256": sha256.hexdigest(),
            "size": archive.stat().st_size,
            "subdir": package.subdir,
            "timestamp": FIXED_EPOCH * 1000,
            "version": package.version,
        }
    for subdir, records in by_subdir.items():
        folder = channel_dir / subdir
        folder.mkdir(parents=True, exist_ok=True)
        repodata = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": records}
        (folder / "repodata.json").write_text(json.dumps(repodata, indent=1, sort_keys=True))
    return channel_dir
