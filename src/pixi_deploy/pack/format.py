"""What a pack is: a tar (optionally zstd-compressed) whose members are, in this order,

1. ``pixi-deploy-pack.json``: format version, environment, platform, lock hash, tool version,
   channels, virtual-package needs, and every file with its size and sha256;
2. ``environment/pixi.lock``: a genuine pixi.lock holding exactly this environment and platform,
   so unpack rebuilds the very same conda records (depends, constrains, channel) that pixi would;
3. ``conda/<archive>`` and ``pypi/<wheel>``: the archives, byte for byte as the channel served them.

Metadata first means a reader learns what to expect before it reads a single package, and can
stop at the first wrong byte. Nothing in a pack depends on the build machine's paths or clock, so
packing the same lock twice gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from pixi_deploy import __version__
from pixi_deploy.errors import PackError

FORMAT_NAME = "pixi-deploy-pack"
FORMAT_VERSION = 1
METADATA_NAME = "pixi-deploy-pack.json"
LOCK_MEMBER = "environment/pixi.lock"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass(frozen=True)
class PackedFile:
    path: str  # member name inside the pack
    sha256: str
    size: int
    kind: str  # "conda" | "pypi"
    name: str  # package name


@dataclass
class PackMetadata:
    environment: str
    platform: str
    lock_hash: str
    channels: list[str]
    virtual_packages: list[str]
    files: list[PackedFile]
    python_version: str | None = None
    workspace: str = ""
    tool_version: str = __version__
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> PackMetadata:
        try:
            raw = json.loads(data)
        except (ValueError, UnicodeDecodeError) as error:
            raise PackError(
                "the pack's metadata is not valid JSON", "re-create the pack"
            ) from error
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise PackError("not a pixi-deploy pack", "pass a file written by `pixi-deploy pack`")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise PackError(
                f"pack format version {version} is not supported by pixi-deploy {__version__} "
                f"(supports {FORMAT_VERSION})",
                "unpack it with the pixi-deploy version that wrote it "
                f"({raw.get('tool_version', 'unknown')})",
            )
        try:
            raw["files"] = [PackedFile(**f) for f in raw["files"]]
            return cls(**raw)
        except (TypeError, KeyError) as error:
            raise PackError(
                f"the pack's metadata is incomplete ({error})", "re-create the pack"
            ) from error

    def file(self, path: str) -> PackedFile | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for f in self.files)
