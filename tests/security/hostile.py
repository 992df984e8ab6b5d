"""Hostile conda packages and packs, made byte by byte.

The project's package builder (`pixi_deploy.testing.channel`) only makes well-formed packages, so
tar headers, zip members and zstd frames are written here by hand: any name, type, link target,
owner and mode a tar header can hold, and paths.json entries that name anything at all.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

BLOCK = 512
RECORD = 20 * BLOCK
FIXED_MTIME = 1_704_067_200
TEXT_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"


@dataclass(frozen=True)
class Member:
    """One tar member, exactly as its header will say."""

    name: str
    data: bytes = b""
    kind: bytes = b"0"  # 0 file, 1 hard link, 2 symlink, 3 char device, 5 folder, 6 FIFO
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    major: int = 0
    minor: int = 0
    mtime: int = FIXED_MTIME


def file(name: str, data: bytes | str = b"", mode: int = 0o644, **kw: int) -> Member:
    return Member(name, data.encode() if isinstance(data, str) else data, b"0", mode=mode, **kw)


def folder(name: str, mode: int = 0o755) -> Member:
    return Member(name, kind=b"5", mode=mode)


def symlink(name: str, target: str) -> Member:
    return Member(name, kind=b"2", link=target, mode=0o777)


def hardlink(name: str, target: str) -> Member:
    return Member(name, kind=b"1", link=target)


def device(name: str, major: int = 1, minor: int = 1) -> Member:
    return Member(name, kind=b"3", major=major, minor=minor, mode=0o666)


def fifo(name: str) -> Member:
    return Member(name, kind=b"6", mode=0o666)


def _octal(value: int, width: int) -> bytes:
    return f"{value:0{width - 1}o}".encode() + b"\0"


def _header(name: bytes, kind: bytes, size: int, m: Member, link: bytes) -> bytes:
    header = bytearray(BLOCK)
    header[0:100] = name[:100].ljust(100, b"\0")
    header[100:108] = _octal(m.mode & 0o7777, 8)
    header[108:116] = _octal(m.uid, 8)
    header[116:124] = _octal(m.gid, 8)
    header[124:136] = _octal(size, 12)
    header[136:148] = _octal(m.mtime, 12)
    header[148:156] = b" " * 8
    header[156:157] = kind
    header[157:257] = link[:100].ljust(100, b"\0")
    header[257:265] = b"ustar\x0000"
    header[329:337] = _octal(m.major, 8)
    header[337:345] = _octal(m.minor, 8)
    header[148:156] = f"{sum(header):06o}".encode() + b"\0 "
    return bytes(header)


def _pax(records: dict[str, str]) -> bytes:
    out = b""
    for key, value in records.items():
        body = f" {key}={value}\n".encode()
        length = len(body) + 1
        while len(str(length).encode()) + len(body) != length:
            length += 1
        out += str(length).encode() + body
    return out


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % BLOCK)


def tar_bytes(members: Sequence[Member]) -> bytes:
    """An uncompressed tar: ustar headers, a pax header first where a name is too long."""
    out = bytearray()
    for m in members:
        name, link = m.name.encode("utf-8", "surrogateescape"), m.link.encode()
        if len(name) > 100 or len(link) > 100:
            pax = _pax({"path": m.name, "linkpath": m.link} if m.link else {"path": m.name})
            out += _header(b"PaxHeader/x", b"x", len(pax), Member("x"), b"") + _padded(pax)
        out += _header(name, m.kind, len(m.data) if m.kind == b"0" else 0, m, link)
        if m.kind == b"0":
            out += _padded(m.data)
    end = 2 * BLOCK
    return bytes(out + b"\0" * (end + (-(len(out) + end) % RECORD)))  # as tar pads: whole records


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


@dataclass
class HostilePackage:
    """A conda package whose payload and paths.json say whatever the test needs.

    ``paths`` defaults to an entry per payload file and symlink (what a real package lists);
    ``extra_paths`` are added, and ``paths_override`` replaces the list entirely."""

    name: str
    payload: list[Member] = field(default_factory=list)
    version: str = "1.0"
    build: str = "h0_0"
    subdir: str = "linux-64"
    archive_format: str = ".conda"
    extra_paths: list[dict[str, object]] = field(default_factory=list)
    paths_override: list[dict[str, object]] | None = None
    index_extra: dict[str, object] = field(default_factory=dict)
    info_extra: list[Member] = field(default_factory=list)

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def filename(self) -> str:
        return self.stem + self.archive_format

    def paths(self) -> list[dict[str, object]]:
        if self.paths_override is not None:
            return self.paths_override
        entries: list[dict[str, object]] = []
        for m in self.payload:
            if m.kind == b"0":
                entries.append(
                    {
                        "_path": m.name,
                        "path_type": "hardlink",
                        "sha256": hashlib.sha256(m.data).hexdigest(),
                        "size_in_bytes": len(m.data),
                    }
                )
            elif m.kind == b"2":
                entries.append({"_path": m.name, "path_type": "softlink", "size_in_bytes": 0})
        return entries + self.extra_paths

    def info(self) -> list[Member]:
        index = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "depends": [],
            "subdir": self.subdir,
            "timestamp": FIXED_MTIME * 1000,
            "license": "MIT",
            **self.index_extra,
        }
        if self.subdir != "noarch":
            index.setdefault("platform", "linux")
            index.setdefault("arch", "x86_64")
        members = [
            file("info/index.json", json.dumps(index)),
            file("info/paths.json", json.dumps({"paths": self.paths(), "paths_version": 1})),
        ]
        return members + self.info_extra

    def build_into(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / self.filename
        if self.archive_format == ".tar.bz2":
            target.write_bytes(bz2.compress(tar_bytes(self.info() + self.payload)))
            return target
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr(_zip("metadata.json"), json.dumps({"conda_pkg_format_version": 2}))
            zf.writestr(_zip(f"pkg-{self.stem}.tar.zst"), zstd(tar_bytes(self.payload)))
            zf.writestr(_zip(f"info-{self.stem}.tar.zst"), zstd(tar_bytes(self.info())))
        target.write_bytes(out.getvalue())
        return target


def _zip(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info
