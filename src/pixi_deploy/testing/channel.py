"""Build small but real conda packages, a local channel and a real pixi.lock, offline.

No machine that runs pixi-deploy's tests (or its ``demo`` command) can be assumed to reach
conda-forge, so this module makes its own packages: genuine ``.conda`` / ``.tar.bz2`` archives with
``info/index.json``, ``info/paths.json`` and prefix placeholders in text and binary mode, indexed by
py-rattler and locked by py-rattler's solver. Everything downstream (packing, laying out a prefix,
deploying) can then be exercised against the real formats without a network.

Builds are byte-for-byte reproducible (fixed mtimes and timestamps, sorted entries, uid/gid 0), so
a package's sha256 is the same on every run and every machine.

Only the stdlib, py-rattler and zstandard are used: the module ships inside the package.
"""

from __future__ import annotations

import asyncio
import bz2
import dataclasses
import hashlib
import io
import json
import os
import random
import re
import tarfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import rattler
import zstandard
from rattler.index import index_fs

__all__ = [
    "BINARY_PLACEHOLDER",
    "CONDA_FORGE_PLACEHOLDER",
    "DEMO_ENVIRONMENTS",
    "TEXT_PLACEHOLDER",
    "GeneratedBytes",
    "PackageSpec",
    "build_channel",
    "build_package",
    "channel_url",
    "conda_forge_like_specs",
    "demo_specs",
    "fake_binary",
    "index_channel",
    "lock_workspace",
    "make_demo_workspace",
    "synthetic_specs",
    "with_bumped",
]

#: The classic conda-build text placeholder.
TEXT_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"
#: A 246-character placeholder for binary files: a binary file can only be patched with a path no
#: longer than its placeholder (the string is null-padded in place), so it is long, like
#: conda-build's ``..._h_env_placehold_placehold...``, to leave room for real deployment paths.
BINARY_PLACEHOLDER = "/opt/pixi_deploy_build_env" + "_placehold" * 22
#: conda-forge's own placeholder shape: 255 characters, the same one in text and binary files.
CONDA_FORGE_PLACEHOLDER = (
    "/home/conda/feedstock_root/build_artifacts/pkg_1704067200000/_h_env" + "_placehold" * 19
)[:255]

#: 2024-01-01T00:00:00Z. Every timestamp in a build is this one, so builds are reproducible.
FIXED_EPOCH = 1_704_067_200
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)
_ZSTD_LEVEL = 3  # fast enough to build a 1 GB benchmark channel; ratio is close to level 19's
_SUBDIRS = {"linux-64": ("linux", "x86_64"), "linux-aarch64": ("linux", "aarch64"), "noarch": None}

FileMode = Literal["text", "binary"]
ArchiveFormat = Literal[".conda", ".tar.bz2"]


@dataclass(frozen=True)
class GeneratedBytes:
    """Deterministic, realistically compressible file content, rendered only when written.

    Benchmarks describe a gigabyte of payload with these instead of holding it in memory; the
    bytes are produced from ``seed`` when the package is built.
    """

    seed: int
    size: int

    def render(self) -> bytes:
        return _generate_bytes(self.seed, self.size)


FileContent = bytes | str | GeneratedBytes


@dataclass
class PackageSpec:
    """Everything needed to build one conda package.

    ``prefix_files`` maps a path in ``files`` to the mode in which its prefix placeholder is
    patched at install time: ``"text"`` files must contain :data:`TEXT_PLACEHOLDER`, ``"binary"``
    files :data:`BINARY_PLACEHOLDER` (null-terminated, as C strings in a real binary are).
    ``activate`` / ``deactivate`` map a script name to the body of
    ``etc/conda/(de)activate.d/<name>.sh``. ``symlinks`` maps a path to a relative link target
    (``lib/libx.so -> libx.so.1``, as real shared-library packages have). A ``noarch="python"``
    package keeps its files under ``site-packages/`` and ``python-scripts/``, which the
    installer moves to the environment's ``lib/pythonX.Y/site-packages`` and ``bin``.

    What real conda-forge packages have and the defaults leave out: ``placeholder`` (one
    placeholder for text and binary files, e.g. :data:`CONDA_FORGE_PLACEHOLDER`),
    ``payload_info`` (``info/...`` files *inside the payload*, licences, tests and recipes,
    which paths.json does not list and which must never land in a prefix) and ``hardlinks``
    (path -> another payload path: a tar hard-link member, both listed in paths.json).
    """

    name: str
    version: str
    build: str = "h0_0"
    build_number: int = 0
    depends: list[str] = field(default_factory=list)
    constrains: list[str] = field(default_factory=list)
    subdir: str = "linux-64"
    noarch: Literal["generic", "python"] | None = None
    files: dict[str, FileContent] = field(default_factory=dict)
    prefix_files: dict[str, FileMode] = field(default_factory=dict)
    executables: frozenset[str] = frozenset()
    activate: dict[str, str] = field(default_factory=dict)
    deactivate: dict[str, str] = field(default_factory=dict)
    archive_format: ArchiveFormat = ".conda"
    symlinks: dict[str, str] = field(default_factory=dict)
    placeholder: str | None = None
    payload_info: dict[str, FileContent] = field(default_factory=dict)
    hardlinks: dict[str, str] = field(default_factory=dict)

    def placeholder_for(self, mode: FileMode) -> str:
        if self.placeholder is not None:
            return self.placeholder
        return TEXT_PLACEHOLDER if mode == "text" else BINARY_PLACEHOLDER

    @property
    def stem(self) -> str:
        return f"{self.name}-{self.version}-{self.build}"

    @property
    def filename(self) -> str:
        return self.stem + self.archive_format

    def payload(self) -> dict[str, FileContent]:
        """The files as installed: ``files`` plus the activation scripts."""
        out = dict(self.files)
        for kind, scripts in (("activate", self.activate), ("deactivate", self.deactivate)):
            for script, body in scripts.items():
                out[f"etc/conda/{kind}.d/{script}.sh"] = body
        return out


# --------------------------------------------------------------------------------------------
# Building one package
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Member:
    path: str
    data: bytes
    executable: bool = False
    link: str | None = None  # a symlink to this (relative) target
    hardlink: str | None = None  # a hard link to this earlier member
    listed: bool = True  # in paths.json (info/ files inside a payload are not)


def build_package(spec: PackageSpec, out_dir: Path) -> Path:
    """Write ``spec`` as a conda package into ``out_dir`` and return the archive's path."""
    _validate(spec)
    payload = _render_payload(spec)
    info = _info_members(spec, payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / spec.filename
    tmp = target.with_name(target.name + ".part")
    with tmp.open("wb") as fh:
        if spec.archive_format == ".conda":
            _write_conda(fh, spec.stem, info, payload)
        else:
            _write_tar_bz2(fh, info + payload)
    tmp.replace(target)
    return target


def _validate(spec: PackageSpec) -> None:
    """Fail at build time, not at install time, on a spec that could not be a real package."""
    if spec.subdir not in _SUBDIRS:
        raise ValueError(f"{spec.name}: unsupported subdir {spec.subdir!r}")
    if (spec.noarch is not None) != (spec.subdir == "noarch"):
        raise ValueError(f"{spec.name}: noarch packages (and only they) go in the noarch subdir")
    for path in spec.payload_info:
        if not path.startswith("info/"):
            raise ValueError(f"{spec.name}: payload_info path {path} is not under info/")
    for path, target in spec.hardlinks.items():
        if target not in spec.files or target in spec.prefix_files:
            raise ValueError(f"{spec.name}: hard link {path} -> {target} needs a plain file")
    for path, mode in spec.prefix_files.items():
        content = spec.files.get(path)
        placeholder = spec.placeholder_for(mode)
        if isinstance(content, GeneratedBytes) or content is None:
            raise ValueError(f"{spec.name}: prefix file {path} must have literal content")
        raw = content.encode() if isinstance(content, str) else content
        if placeholder.encode() not in raw:
            raise ValueError(f"{spec.name}: {path} does not contain the {mode} placeholder")


def _render_payload(spec: PackageSpec) -> list[_Member]:
    members = []
    for path, content in sorted(spec.payload().items()):
        if isinstance(content, GeneratedBytes):
            data = content.render()
        else:
            data = content.encode() if isinstance(content, str) else bytes(content)
        members.append(_Member(path, data, path in spec.executables))
    for path, target in sorted(spec.symlinks.items()):
        members.append(_Member(path, b"", link=target))
    for path, target in sorted(spec.hardlinks.items()):
        source = next(m for m in members if m.path == target)
        members.append(_Member(path, source.data, source.executable, hardlink=target))
    for path, content in sorted(spec.payload_info.items()):
        data = content.encode() if isinstance(content, str) else bytes(content)  # type: ignore[arg-type]
        members.append(_Member(path, data, listed=False))
    # a hard link must follow its target in the tar; otherwise, sorted as conda-build sorts
    return sorted(members, key=lambda m: (m.hardlink is not None, m.path))


def _info_members(spec: PackageSpec, payload: list[_Member]) -> list[_Member]:
    entries = [_paths_entry(spec, m) for m in payload if m.listed]
    has_prefix = "".join(
        f"{e['prefix_placeholder']} {e['file_mode']} {e['_path']}\n"
        for e in entries
        if "prefix_placeholder" in e
    )
    files = {
        "info/index.json": _json(_index_json(spec)),
        "info/paths.json": _json({"paths": entries, "paths_version": 1}),
        "info/files": "".join(m.path + "\n" for m in payload if m.listed).encode(),
        "info/about.json": _json({"license": "BSD-3-Clause", "summary": f"{spec.name} (test)"}),
    }
    if has_prefix:
        files["info/has_prefix"] = has_prefix.encode()
    return [_Member(path, data) for path, data in sorted(files.items())]


def _index_json(spec: PackageSpec) -> dict[str, object]:
    index: dict[str, object] = {
        "build": spec.build,
        "build_number": spec.build_number,
        "constrains": sorted(spec.constrains),
        "depends": sorted(spec.depends),
        "license": "BSD-3-Clause",
        "name": spec.name,
        "subdir": spec.subdir,
        "timestamp": FIXED_EPOCH * 1000,
        "version": spec.version,
    }
    platform_arch = _SUBDIRS[spec.subdir]
    if platform_arch is not None:
        index["platform"], index["arch"] = platform_arch
    if spec.noarch is not None:
        index["noarch"] = spec.noarch
    return index


def _paths_entry(spec: PackageSpec, member: _Member) -> dict[str, object]:
    entry: dict[str, object] = {
        "_path": member.path,
        "path_type": "hardlink" if member.link is None else "softlink",
        "sha256": hashlib.sha256(member.data).hexdigest(),
        "size_in_bytes": len(member.data),
    }
    mode = spec.prefix_files.get(member.path)
    if mode is not None:
        entry["file_mode"] = mode
        entry["prefix_placeholder"] = spec.placeholder_for(mode)
    return entry


def _json(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _write_tar(fileobj: BinaryIO, members: Iterable[_Member]) -> None:
    """An uncompressed tar stream with every varying field pinned, for reproducible hashes."""
    with tarfile.open(fileobj=fileobj, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.path)
            info.size, info.mtime = len(m.data), FIXED_EPOCH
            info.mode = 0o755 if m.executable else 0o644
            if m.link is not None:
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, m.link, 0o777
            elif m.hardlink is not None:
                info.type, info.linkname, info.size = tarfile.LNKTYPE, m.hardlink, 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(m.data))


def _write_tar_bz2(fh: BinaryIO, members: list[_Member]) -> None:
    with bz2.BZ2File(fh, "wb", compresslevel=9) as bz:
        _write_tar(bz, members)  # type: ignore[arg-type]


def _write_conda(fh: BinaryIO, stem: str, info: list[_Member], payload: list[_Member]) -> None:
    """The v2 format: an uncompressed zip of metadata.json and two zstd-compressed tars."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        with zf.open(_zip_info("metadata.json"), "w") as out:
            out.write(json.dumps({"conda_pkg_format_version": 2}).encode())
        for name, members in ((f"pkg-{stem}.tar.zst", payload), (f"info-{stem}.tar.zst", info)):
            with zf.open(_zip_info(name), "w") as out:
                cctx = zstandard.ZstdCompressor(level=_ZSTD_LEVEL)
                with cctx.stream_writer(out, closefd=False) as zw:
                    _write_tar(zw, members)


def _zip_info(name: str) -> zipfile.ZipInfo:
    zinfo = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    zinfo.create_system = 3  # unix, whatever the build machine
    zinfo.external_attr = 0o644 << 16
    zinfo.compress_type = zipfile.ZIP_STORED
    return zinfo


# --------------------------------------------------------------------------------------------
# Channel and lock
# --------------------------------------------------------------------------------------------


def channel_url(channel_dir: Path) -> str:
    """The ``file://`` URL under which rattler (and pixi) find a local channel."""
    return channel_dir.resolve().as_uri()


def build_channel(channel_dir: Path, specs: Sequence[PackageSpec], *, workers: int = 0) -> Path:
    """Build every spec into ``channel_dir/<subdir>/`` and write each subdir's repodata.json.

    Packages are built in threads (zstd, bz2 and sha256 release the GIL); ``workers=0`` means
    one per CPU. An empty ``noarch`` subdir is always created, as conda channels require.
    """
    channel_dir.mkdir(parents=True, exist_ok=True)
    (channel_dir / "noarch").mkdir(exist_ok=True)
    jobs = sorted(specs, key=lambda s: -_approx_size(s))  # biggest first: better packing
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(pool.map(lambda s: build_package(s, channel_dir / s.subdir), jobs))
    return index_channel(channel_dir, {s.subdir for s in specs})


def index_channel(channel_dir: Path, subdirs: Iterable[str]) -> Path:
    """Write ``repodata.json`` for ``subdirs`` (and ``noarch``) of a channel whose packages are
    in place (`build_channel`, or packages written some other way)."""
    (channel_dir / "noarch").mkdir(parents=True, exist_ok=True)
    every = sorted(set(subdirs) | {"noarch"})
    for subdir in every:
        _index_subdir(channel_dir, subdir)
    for subdir in every:  # after all indexing: each index_fs call rewrites noarch too
        _pin_indexed_timestamp(channel_dir / subdir / "repodata.json")
    return channel_dir


def _index_subdir(channel_dir: Path, subdir: str) -> None:
    asyncio.run(
        index_fs(
            channel_dir,
            target_platform=rattler.Subdir(subdir),
            write_zst=False,
            write_shards=False,
            force=True,
        )
    )


def _pin_indexed_timestamp(repodata_path: Path) -> None:
    """Replace the indexer's clock in ``indexed_timestamp`` by the fixed build time.

    Without the pin every rebuild of the same channel gives a different repodata.json and so a
    different pixi.lock, which would defeat tests of lock-hash based caching.
    """
    repodata = json.loads(repodata_path.read_text())
    for key in ("packages", "packages.conda"):
        for record in repodata.get(key, {}).values():
            record["indexed_timestamp"] = FIXED_EPOCH * 1000
    repodata_path.write_text(json.dumps(repodata, indent=2, sort_keys=True) + "\n")


def _approx_size(spec: PackageSpec) -> int:
    return sum(c.size if isinstance(c, GeneratedBytes) else len(c) for c in spec.files.values())


def lock_workspace(
    workspace_dir: Path,
    channel_dir: Path,
    environments: Mapping[str, Sequence[str]],
    platforms: Sequence[str],
    *,
    name: str = "demo",
    extra_manifest: str = "",
) -> Path:
    """Write ``pixi.toml`` and a real, solved ``pixi.lock`` for a workspace on a local channel.

    ``environments`` maps an environment to match specs, composed the way pixi composes them:
    ``"default"`` holds the ``[dependencies]``, and every other environment ``X`` is the default
    feature plus a feature ``X`` holding its own specs (``[environments] X = ["X"]``).

    The lock's records point at the local channel: py-rattler writes their location as an
    absolute filesystem path (``conda: /…/channel/linux-64/greet-1.0.0-h0_0.conda``, unescaped),
    and reading the lock back turns it into a percent-escaped ``file:///…`` URL again
    (``record.url``), which ``rattler.install`` accepts. Such a lock only works on this machine.
    """
    workspace_dir.mkdir(parents=True, exist_ok=True)
    url = channel_url(channel_dir)
    manifest = _manifest(name, url, environments, platforms) + extra_manifest
    (workspace_dir / "pixi.toml").write_text(manifest)
    base = list(environments.get("default", []))
    solved = {
        (env, platform): _solve(url, base if env == "default" else [*base, *specs], platform)
        for env, specs in environments.items()
        for platform in platforms
    }
    path = workspace_dir / "pixi.lock"
    _write_lock(path, url, platforms, solved)
    _check_lock(path, solved)
    return path


_Solved = dict[tuple[str, str], list[rattler.RepoDataRecord]]


def _solve(url: str, specs: Sequence[str], platform: str) -> list[rattler.RepoDataRecord]:
    """Solve against the local channel only; a fresh uncached gateway never sees stale repodata."""
    gateway = rattler.Gateway(default_config=rattler.SourceConfig(cache_action="no-cache"))
    records = asyncio.run(
        rattler.solve(
            [rattler.Channel(url)],
            list(specs),
            gateway=gateway,
            platforms=[rattler.Subdir(platform), rattler.Subdir("noarch")],
            virtual_packages=[],
        )
    )
    return sorted(records, key=lambda r: r.name.normalized)


def _write_lock(path: Path, url: str, platforms: Sequence[str], solved: _Solved) -> None:
    lock = rattler.LockFile([rattler.LockPlatform(p) for p in platforms])
    # The lock's own platform objects: fresh LockPlatform()s work here but make the read-side
    # calls panic, and one rule for both sides is easier to keep.
    lock_platforms = {p.name: p for p in lock.platforms()}
    for env in dict.fromkeys(env for env, _ in solved):
        lock.set_channels(env, [rattler.LockChannel(url)])
    for (env, platform), records in solved.items():
        for record in records:
            lock.add_conda_package(env, lock_platforms[platform], record)
    lock.to_path(path)


def _check_lock(path: Path, solved: _Solved) -> None:
    """Read the lock back: a lock that does not round-trip is worse than none."""
    lock = rattler.LockFile.from_path(path)
    platforms = {p.name: p for p in lock.platforms()}
    for (env_name, platform), records in solved.items():
        env = lock.environment(env_name)
        back = env.conda_repodata_records_for_platform(platforms[platform]) if env else None
        want = {(r.url, r.sha256) for r in records}
        if back is None or {(r.url, r.sha256) for r in back} != want:
            raise RuntimeError(f"{path}: {env_name}/{platform} did not read back as written")


def _manifest(
    name: str, url: str, environments: Mapping[str, Sequence[str]], platforms: Sequence[str]
) -> str:
    lines = [
        "[workspace]",
        f"name = {json.dumps(name)}",
        f"channels = [{json.dumps(url)}]",
        f"platforms = [{', '.join(json.dumps(p) for p in platforms)}]",
        "",
        "[dependencies]",
        *_toml_deps(environments.get("default", [])),
    ]
    others = [env for env in environments if env != "default"]
    for env in others:
        lines += ["", f"[feature.{env}.dependencies]", *_toml_deps(environments[env])]
    if others:
        lines += ["", "[environments]", *(f"{env} = [{json.dumps(env)}]" for env in others)]
    return "\n".join(lines) + "\n"


def _toml_deps(specs: Iterable[str]) -> list[str]:
    out = []
    for spec in specs:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", spec)
        if match is None:
            raise ValueError(f"cannot write match spec {spec!r} into pixi.toml")
        out.append(f"{match[1]} = {json.dumps(match[2] or '*')}")
    return out


# --------------------------------------------------------------------------------------------
# Ready-made package sets
# --------------------------------------------------------------------------------------------


def fake_binary(strings: Sequence[str], size: int = 4096, seed: int = 0) -> bytes:
    """A binary file (ELF magic, opaque bytes) with ``strings`` embedded as C strings.

    Binary-mode placeholders only make sense inside such a file: the installer overwrites the
    placeholder in place and null-pads what is left, so the file keeps its length.
    """
    blob = b"".join(s.encode() + b"\0" for s in strings)
    body = _rng(seed).randbytes(max(size - 64 - len(blob), 0))
    out = b"\x7fELF\x02\x01\x01" + b"\0" * 57 + body[: len(body) // 2] + blob
    return out + body[len(body) // 2 :]


def demo_specs(platforms: Sequence[str] = ("linux-64", "linux-aarch64")) -> list[PackageSpec]:
    """A small, realistic environment: a library, a tool using it, config, data and an extra.

    ``greet`` prints ``hello from greet <version> at <prefix>`` with the prefix patched in at
    install time, so a test can tell that relocation happened.
    """
    specs = [_greet_data()]
    for subdir in platforms:
        specs += [_libgreet(subdir), _greet(subdir), _greet_config(subdir), _greet_extra(subdir)]
    return specs


def _libgreet(subdir: str) -> PackageSpec:
    so = fake_binary(
        [f"{BINARY_PLACEHOLDER}/share/libgreet/README", f"{BINARY_PLACEHOLDER}/lib"],
        seed=len(subdir),
    )
    return PackageSpec(
        name="libgreet",
        version="1.2.0",
        subdir=subdir,
        files={"lib/libgreet.so": so, "share/libgreet/README": "libgreet says hello\n"},
        prefix_files={"lib/libgreet.so": "binary"},
        archive_format=".tar.bz2",
    )


_GREET_SH = """\
#!/bin/sh
# greet: the install prefix below is patched in when the package is installed.
prefix="{placeholder}"
echo "hello from greet {version} at $prefix"
cat "$prefix/share/libgreet/README"
echo "config: ${{GREET_CONFIG:-unset}}"
"""


def _greet(subdir: str, version: str = "1.0.0") -> PackageSpec:
    return PackageSpec(
        name="greet",
        version=version,
        subdir=subdir,
        depends=["libgreet >=1.2"],
        files={"bin/greet": _GREET_SH.format(placeholder=TEXT_PLACEHOLDER, version=version)},
        prefix_files={"bin/greet": "text"},
        executables=frozenset({"bin/greet"}),
    )


def _greet_config(subdir: str) -> PackageSpec:
    return PackageSpec(
        name="greet-config",
        version="0.1.0",
        subdir=subdir,
        files={"etc/greet.conf": "style = friendly\n"},
        activate={"greet-config": 'export GREET_CONFIG="${CONDA_PREFIX}/etc/greet.conf"\n'},
        deactivate={"greet-config": "unset GREET_CONFIG\n"},
    )


def _greet_data() -> PackageSpec:
    return PackageSpec(
        name="greet-data",
        version="2024.1",
        subdir="noarch",
        noarch="generic",
        files={"share/greet-data/greetings.txt": "hello\nhallo\nbonjour\nhola\n"},
    )


def _greet_extra(subdir: str) -> PackageSpec:
    script = f'#!/bin/sh\n"{TEXT_PLACEHOLDER}/bin/greet" "$@"\necho "and some extra"\n'
    return PackageSpec(
        name="greet-extra",
        version="0.3.0",
        subdir=subdir,
        depends=["greet"],
        files={"bin/greet-extra": script},
        prefix_files={"bin/greet-extra": "text"},
        executables=frozenset({"bin/greet-extra"}),
    )


_LICENSE = "BSD 3-Clause License\n\nCopyright (c) the {name} developers\n"
_CF_TOOL = """\
#!/bin/sh
# cftool: prints where it was installed (a text-mode, 255-character placeholder)
prefix="{placeholder}"
echo "cftool at $prefix"
"""


def conda_forge_like_specs(subdir: str = "linux-64") -> list[PackageSpec]:
    """Packages shaped like conda-forge's (see shared notes on real packages): licences, tests
    and recipes inside the payload under ``info/`` (several packages with the same names),
    the 255-character placeholder in binary and text files, ``has_prefix`` beside paths.json,
    a shared-library softlink chain, a softlink to a folder, a hard link inside a payload, and
    a ``.tar.bz2`` with the same traits."""
    so = fake_binary(
        [f"{CONDA_FORGE_PLACEHOLDER}/lib", f"{CONDA_FORGE_PLACEHOLDER}/share/libcf"], seed=255
    )
    libcf = PackageSpec(
        name="libcf",
        version="1.2.3",
        build="h4bc722e_0",
        subdir=subdir,
        placeholder=CONDA_FORGE_PLACEHOLDER,
        files={
            "lib/libcf.so.1.2.3": so,
            "share/libcf/doc/README": "libcf\n",
            "bin/cf-config": f"#!/bin/sh\necho {CONDA_FORGE_PLACEHOLDER}\n",
            "share/libcf/data.txt": "same bytes, two names\n",
        },
        prefix_files={"lib/libcf.so.1.2.3": "binary", "bin/cf-config": "text"},
        executables=frozenset({"bin/cf-config"}),
        symlinks={
            "lib/libcf.so.1": "libcf.so.1.2.3",
            "lib/libcf.so": "libcf.so.1",
            "share/doc/libcf": "../libcf/doc",  # a softlink to a folder
        },
        hardlinks={"share/libcf/data-copy.txt": "share/libcf/data.txt"},
        payload_info={
            "info/licenses/LICENSE": _LICENSE.format(name="libcf"),
            "info/licenses/COPYING": "GPL-ish, for the test\n",
            "info/test/run_test.sh": "test -f $PREFIX/lib/libcf.so\n",
            "info/recipe/meta.yaml": "package: {name: libcf}\n",
        },
    )
    cftool = PackageSpec(
        name="cftool",
        version="0.4.0",
        build="hd590300_1",
        subdir=subdir,
        depends=["libcf >=1.2"],
        placeholder=CONDA_FORGE_PLACEHOLDER,
        files={"bin/cftool": _CF_TOOL.format(placeholder=CONDA_FORGE_PLACEHOLDER)},
        prefix_files={"bin/cftool": "text"},
        executables=frozenset({"bin/cftool"}),
        payload_info={"info/licenses/LICENSE": _LICENSE.format(name="cftool")},
    )
    cfdata = PackageSpec(
        name="cfdata",
        version="2024.2",
        build="h0_2",
        subdir=subdir,
        placeholder=CONDA_FORGE_PLACEHOLDER,
        files={"share/cfdata/paths.txt": f"data lives in {CONDA_FORGE_PLACEHOLDER}/share\n"},
        prefix_files={"share/cfdata/paths.txt": "text"},
        payload_info={"info/licenses/LICENSE": _LICENSE.format(name="cfdata")},
        archive_format=".tar.bz2",
    )
    return [libcf, cftool, cfdata]


#: The environments of the demo workspace, as :func:`lock_workspace` takes them.
DEMO_ENVIRONMENTS: dict[str, list[str]] = {
    "default": ["greet", "greet-config", "greet-data"],
    "extra": ["greet-extra"],
}


def make_demo_workspace(
    dest: Path, platforms: Sequence[str] = ("linux-64", "linux-aarch64")
) -> Path:
    """Build the demo channel at ``dest/channel`` and a locked workspace at ``dest/workspace``.

    Environments: ``default`` (greet, greet-config, greet-data) and ``extra`` (default plus
    greet-extra). Returns the workspace directory.
    """
    channel = build_channel(dest / "channel", demo_specs(platforms))
    workspace = dest / "workspace"
    lock_workspace(workspace, channel, DEMO_ENVIRONMENTS, platforms)
    return workspace


def with_bumped(specs: Sequence[PackageSpec], name: str) -> list[PackageSpec]:
    """A copy of ``specs`` in which every build of ``name`` has its last version part bumped.

    For testing "one package changed" redeploys: relock after rebuilding the channel.
    """
    if not any(s.name == name for s in specs):
        raise KeyError(f"no package named {name!r}")
    return [
        dataclasses.replace(s, version=_bump(s.version)) if s.name == name else s for s in specs
    ]


def _bump(version: str) -> str:
    head, _, last = version.rpartition(".")
    bumped = str(int(last) + 1) if last.isdigit() else last + ".1"
    return f"{head}.{bumped}" if head else bumped


# --------------------------------------------------------------------------------------------
# Synthetic benchmark channel
# --------------------------------------------------------------------------------------------


def _rng(seed: int) -> random.Random:
    """Seeded, reproducible randomness for generated test data (never for anything secret)."""
    return random.Random(seed)  # noqa: S311


def synthetic_specs(
    n_packages: int = 300,
    total_bytes: int = 1_000_000_000,
    subdir: str = "linux-64",
    seed: int = 0,
) -> list[PackageSpec]:
    """Benchmark packages shaped like a real environment, deterministic by ``seed``.

    Sizes are log-normal (a few large packages, many small ones) and sum to ``total_bytes``;
    files are realistically compressible; each package depends on a few earlier ones (a DAG);
    every fifth package carries a text-mode placeholder script.
    """
    rng = _rng(seed)
    weights = [rng.lognormvariate(0, 2.0) for _ in range(n_packages)]
    scale = total_bytes / sum(weights)
    return [
        _synthetic_package(rng, i, max(int(w * scale), 64), subdir) for i, w in enumerate(weights)
    ]


def _synthetic_package(rng: random.Random, index: int, size: int, subdir: str) -> PackageSpec:
    name = f"synth-{index:04d}"
    depends = sorted({f"synth-{rng.randrange(index):04d}" for _ in range(min(index, 3))})
    n_files = max(1, min(2000, size // 60_000 + rng.randint(1, 20)))
    cuts = sorted(rng.randrange(size) for _ in range(n_files - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, size], strict=True)]
    files: dict[str, FileContent] = {
        f"lib/{name}/{_synthetic_dir(i)}/f{i:04d}.bin": GeneratedBytes(rng.getrandbits(32), n)
        for i, n in enumerate(sizes)
    }
    spec = PackageSpec(name=name, version="1.0.0", subdir=subdir, depends=depends, files=files)
    if index % 5 == 0:
        script = f'#!/bin/sh\nexec "{TEXT_PLACEHOLDER}/lib/{name}/run" "$@"\n'
        spec.files[f"bin/{name}"] = script
        spec.prefix_files[f"bin/{name}"] = "text"
        spec.executables = frozenset({f"bin/{name}"})
    return spec


def _synthetic_dir(i: int) -> str:
    return ("bin", "lib", "share", "include", "python")[i % 5]


# Words a real package's text and symbol tables are made of.
_WORDS = (
    "the of and to in is for on with as by at from this that data value return error struct "
    "int void char const static inline unsigned size_t NULL if else while for switch case "
    "break def self import class None True False __init__ print raise except lambda yield "
    "async await GLIBC_2.17 _ZNSt6vector malloc free memcpy strlen pthread_create dlopen "
    "libstdc++.so.6"
)
_VOCAB = _WORDS.split()


def _text_pool() -> list[bytes]:
    """Fixed text fragments built from a vocabulary: the compressible part of generated files."""
    rng = _rng(1234)
    pool = []
    for _ in range(256):
        words = [rng.choice(_VOCAB) for _ in range(rng.randint(200, 1200))]
        pool.append((" ".join(words) + "\n").encode())
    return pool


_TEXT_POOL = _text_pool()
# Maps a random byte to one of 8 "opcode-like" values: ~3 bits of entropy per byte, compressing
# like machine code does, while staying fast to generate (bytes.translate runs in C).
_LOW_ENTROPY = bytes((b % 8) * 31 for b in range(256))


def _generate_bytes(seed: int, size: int) -> bytes:
    """Content mixing vocabulary text, low-entropy "code" and random blocks.

    zstd compresses it about 2x, in the range of real conda packages; pure random bytes (1x)
    or zeros (1000x) would make pack sizes and timings meaningless.
    """
    rng = _rng(seed)
    parts: list[bytes] = []
    total = 0
    while total < size:
        kind = rng.random()
        n = rng.randint(512, 16384)
        if kind < 0.45:
            chunk = rng.choice(_TEXT_POOL)
        elif kind < 0.9:
            chunk = rng.randbytes(n).translate(_LOW_ENTROPY)
        else:
            chunk = rng.randbytes(n)
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)[:size]
