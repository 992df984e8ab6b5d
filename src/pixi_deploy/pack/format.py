"""What a pack is: a tar (optionally zstd-compressed) whose members are, in this order,

1. ``pixi-deploy-pack.json``: format version, environment, platform, lock hash, tool version,
   channels, virtual-package needs, the embedded lock's sha256, and every file with its size
   and sha256;
2. ``environment/pixi.lock``: a genuine pixi.lock holding exactly this environment and platform,
   so unpack rebuilds the very same conda records (depends, constrains, channel) that pixi would;
3. ``conda/<archive>`` and ``pypi/<wheel>``: the archives, byte for byte as the channel served them.

Metadata first means a reader learns what to expect before it reads a single package, and can
stop at the first wrong byte. Nothing in a pack depends on the build machine's paths or clock, so
packing the same lock twice gives the same bytes.

The pack's **digest** is the sha256 of the metadata member's bytes. The metadata holds the
sha256 of the lock and of every archive, and unpack checks each of them, so one digest pins
everything that gets installed (compressed or not, the digest is the same). Metadata is
untrusted input until then: every field is type-checked here, and member names must be plain
``conda/<file>`` / ``pypi/<file>`` names.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pixi_deploy import __version__
from pixi_deploy.errors import PackError, WorkspaceError
from pixi_deploy.workspace import check_environment_name, check_platform

FORMAT_NAME = "pixi-deploy-pack"
#: 2: the metadata carries the embedded lock's sha256 (version 1 packs left the lock unchecked).
FORMAT_VERSION = 2
METADATA_NAME = "pixi-deploy-pack.json"
LOCK_MEMBER = "environment/pixi.lock"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: Bounds for what is read into memory before anything is checked.
MAX_METADATA_BYTES = 64 << 20
MAX_LOCK_BYTES = 256 << 20

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MEMBER = re.compile(r"(conda|pypi)/([A-Za-z0-9_+][A-Za-z0-9._+!%=-]*)")
_ARCHIVE_SUFFIXES = {"conda": (".conda", ".tar.bz2"), "pypi": (".whl",)}


def digest_of(metadata_bytes: bytes) -> str:
    """The pack digest: ``sha256:<hex>`` of the metadata member, as stored."""
    return "sha256:" + hashlib.sha256(metadata_bytes).hexdigest()


def normalize_digest(text: str) -> str:
    """A digest as the user may write it (with or without ``sha256:``), or PackError."""
    value = text.strip().lower().removeprefix("sha256:")
    if not _SHA256.fullmatch(value):
        raise PackError(
            f"{text!r} is not a pack digest",
            "pass the sha256:<64 hex digits> that `pixi-deploy pack` or `pack-info` printed",
        )
    return "sha256:" + value


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
    lock_sha256: str = ""
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
        if version == 1:
            raise PackError(
                "this pack has format version 1, whose embedded lock carries no checksum, so "
                f"pixi-deploy {__version__} cannot check what it would install",
                "re-create the pack with this pixi-deploy",
            )
        if version != FORMAT_VERSION:
            shown = repr(version)[:40]
            raise PackError(
                f"pack format version {shown} is not supported by pixi-deploy {__version__} "
                f"(supports {FORMAT_VERSION})",
                "unpack it with the pixi-deploy version that wrote it",
            )
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise _bad(f"unknown field {unknown[0][:40]!r}")
        try:
            if not isinstance(raw.get("files"), list):
                raise TypeError("files")
            raw["files"] = [PackedFile(**f) for f in raw["files"]]
            metadata = cls(**raw)
        except (TypeError, KeyError):
            raise _bad("a field is missing or of the wrong type") from None
        metadata.check()
        return metadata

    def check(self) -> None:
        """Every field of the right type and shape; PackError (one line) otherwise."""
        try:
            check_environment_name(self.environment, "the pack's environment")
            check_platform(self.platform, "the pack's platform")
        except WorkspaceError as error:
            raise _bad(error.message) from None
        for key in ("lock_hash", "lock_sha256"):
            if not isinstance(getattr(self, key), str) or not _SHA256.fullmatch(getattr(self, key)):
                raise _bad(f"{key} is not a sha256")
        for key in ("workspace", "tool_version"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key).isprintable():
                raise _bad(f"{key} is not a printable string")
        if self.python_version is not None and not (
            isinstance(self.python_version, str) and re.fullmatch(r"\d+\.\d+", self.python_version)
        ):
            raise _bad("python_version is not major.minor")
        for key in ("channels", "virtual_packages"):
            value = getattr(self, key)
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _bad(f"{key} is not a list of strings")
        if not isinstance(self.extra, dict) or not isinstance(self.files, list):
            raise _bad("extra or files has the wrong type")
        seen: set[str] = set()
        for entry in self.files:
            _check_file(entry)
            if entry.path in seen or entry.path in (METADATA_NAME, LOCK_MEMBER):
                raise _bad(f"{entry.path} is listed twice")
            seen.add(entry.path)

    def file(self, path: str) -> PackedFile | None:
        return next((f for f in self.files if f.path == path), None)

    @property
    def payload_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _check_file(entry: PackedFile) -> None:
    if not isinstance(entry.path, str) or not isinstance(entry.kind, str):
        raise _bad("a file entry has no path or kind")
    match = _MEMBER.fullmatch(entry.path)
    if match is None or match[1] != entry.kind or ".." in match[2]:
        raise _bad(f"the member name {entry.path!r} is not conda/<file> or pypi/<file>")
    if not match[2].endswith(_ARCHIVE_SUFFIXES[entry.kind]):
        raise _bad(f"{entry.path} is not a {' or '.join(_ARCHIVE_SUFFIXES[entry.kind])} file")
    if not isinstance(entry.sha256, str) or not _SHA256.fullmatch(entry.sha256):
        raise _bad(f"{entry.path} has no sha256")
    if type(entry.size) is not int or entry.size < 0:
        raise _bad(f"{entry.path} has no size")
    if not isinstance(entry.name, str) or not entry.name.isprintable():
        raise _bad(f"{entry.path} has no package name")


def _bad(what: str) -> PackError:
    return PackError(
        f"the pack's metadata is invalid: {what}",
        "the pack is damaged or was altered; re-create it with `pixi-deploy pack`",
    )
