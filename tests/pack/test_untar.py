"""The in-process payload writer against Python's own tarfile: same tree, same modes and times,
for every header format conda payloads come in; and what it refuses, before writing it (the
whole hostile-package matrix is in tests/security)."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember
from pixi_deploy.pack.untar import WINDOW, UnusualMember, extract_payload, read_members

LONG_DIR = "lib/python3.11/site-packages/" + "a_rather_long_package_name/" * 6


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644, mtime: int = 1_600_000_000) -> tuple:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, mtime
    return info, data


def _special(name: str, kind: bytes, target: str = "", mode: int = 0o755) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = kind, target, mode, 1_500_000_000
    return info, None


def _hardlink(name: str, target: str, mode: int) -> tuple:
    """As tarfile writes one: the same inode, so the target's own mode and mtime."""
    info, _ = _special(name, tarfile.LNKTYPE, target, mode)
    info.mtime = 1_600_000_000
    return info, None


def _payload(members: list[tuple], fmt: int = tarfile.PAX_FORMAT) -> memoryview:
    return memoryview(zstandard.ZstdCompressor(level=1).compress(_tar(members, fmt)))


def _sample() -> list[tuple]:
    big = bytes(range(256)) * (3 * WINDOW // 256 + 77)  # crosses several buffer refills
    return [
        _special("bin", tarfile.DIRTYPE),
        _file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
        _file("lib/libx.so.1.2", big, 0o755),
        _special("lib/libx.so.1", tarfile.SYMTYPE, "libx.so.1.2"),
        _file("share/empty", b""),
        _file("share/exactly-512", b"x" * 512, 0o600),
        _file(f"{LONG_DIR}module_with_a_long_name.py", b"VALUE = 1\n"),
        _hardlink("share/hardlinked", "share/exactly-512", 0o600),
        _file("share/nested/deeper/file.txt", b"deep\n", mtime=1_234_567_890),
    ]


def _tree(root: Path) -> dict[str, tuple]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = os.lstat(path)
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), path.read_bytes())
    return out


def _extract(payload: memoryview, dest: Path, symlinks: set[str] | None = None) -> None:
    dest.mkdir(exist_ok=True)
    declared = {"lib/libx.so.1"} if symlinks is None else symlinks
    made = extract_payload(
        payload,
        str(dest),
        declared_symlinks=declared,
        buffer=bytearray(WINDOW),
    )
    with ConfinedFolder(dest) as tree:  # as the installer does, once every package is written
        for name, target in made.items():
            tree.symlink(name, target)


@pytest.mark.parametrize(
    "fmt",
    [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT],
    ids=["pax", "gnu", "ustar"],
)
def test_same_tree_as_tarfile(tmp_path: Path, fmt: int) -> None:
    members = _sample()
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot hold the long name: prefix/name split only
        members = [m for m in members if not m[0].name.startswith(LONG_DIR)]
    data = _tar(members, fmt)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "by-tarfile", filter="tar")
    _extract(memoryview(zstandard.ZstdCompressor().compress(data)), tmp_path / "ours")
    expected, got = _tree(tmp_path / "by-tarfile"), _tree(tmp_path / "ours")
    assert got == expected
    assert os.stat(tmp_path / "ours/share/hardlinked").st_nlink == 2
    assert got["share/nested/deeper/file.txt"][2] == 1_234_567_890  # .pyc checks need mtimes


def test_modes_are_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        _extract(_payload([_file("a", b"1", 0o755), _file("b", b"2", 0o640)]), tmp_path / "p")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p/a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "p/b").stat().st_mode) == 0o640


def test_a_later_member_of_the_same_name_wins(tmp_path: Path) -> None:
    _extract(_payload([_file("x", b"old"), _file("x", b"new")]), tmp_path / "p")
    assert (tmp_path / "p/x").read_bytes() == b"new"


@pytest.mark.parametrize(
    "member",
    [
        _file("/etc/evil", b"x"),
        _file("../evil", b"x"),
        _file("lib/../../evil", b"x"),
        _special("lib/undeclared", tarfile.SYMTYPE, "/etc"),
        _special("dev/null", tarfile.CHRTYPE),
        _special("fifo", tarfile.FIFOTYPE),
        _special("lib/hard", tarfile.LNKTYPE, "../../etc/passwd"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "inner-dotdot",
        "undeclared-symlink",
        "device",
        "fifo",
        "hardlink-out",
    ],
)
def test_unsafe_members_are_refused_before_they_are_written(tmp_path: Path, member: tuple) -> None:
    dest = tmp_path / "inside" / "p"
    dest.parent.mkdir()
    with pytest.raises(UnsafeMember):
        _extract(_payload([member]), dest, symlinks=set())
    assert not (tmp_path / "evil").exists() and not (tmp_path / "inside" / "evil").exists()
    assert list(dest.iterdir()) == []


def test_nothing_is_written_beneath_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "p"
    dest.mkdir()
    (dest / "lib64").symlink_to(outside)  # another package's symlink, already in the prefix
    payload = _payload([_file("lib64/escaped", b"x")])
    with pytest.raises(UnsafeMember, match="beneath the symlink lib64"):
        extract_payload(
            payload,
            str(dest),
            declared_symlinks=set(),
            all_symlinks={"lib64"},
            buffer=bytearray(WINDOW),
        )
    assert list(outside.iterdir()) == []


def test_a_truncated_payload_is_refused(tmp_path: Path) -> None:
    data = _tar([_file("big", b"y" * 100_000)], tarfile.PAX_FORMAT)[:50_000]
    with pytest.raises(UnusualMember, match="ends"):
        _extract(memoryview(zstandard.ZstdCompressor().compress(data)), tmp_path / "p")


def test_corrupt_zstd_raises_zstd_error(tmp_path: Path) -> None:
    payload = bytearray(_payload(_sample()))
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises((zstandard.ZstdError, UnusualMember)):
        _extract(memoryview(bytes(payload)), tmp_path / "p")


def test_read_members_finds_small_files_in_every_format() -> None:
    long_name = f"info/{'x' * 120}/paths.json"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        data = _tar(
            [
                _file("info/index.json", b"{}"),
                _file("info/about.json", b"a"),
                _file(long_name, b"[]"),
            ],
            fmt,
        )
        assert read_members(data, {"info/index.json", long_name}) == {
            "info/index.json": b"{}",
            long_name: b"[]",
        }
    assert read_members(data, {"info/missing.json"}) == {}
