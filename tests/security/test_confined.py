"""The chokepoint itself (pack/confined.py): names, symlink resolution, and writes that never
follow a symlink, whatever the caller's own checks missed."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from pixi_deploy.pack.confined import (
    ConfinedFolder,
    UnsafeMember,
    check_name,
    extract_tar,
    resolve_link,
)
from security.conftest import Decoys, snapshot
from security.hostile import device, file, hardlink, symlink, tar_bytes


@pytest.mark.parametrize(
    ("name", "plain"), [("a", "a"), ("./a/b", "a/b"), ("a/b/", "a/b"), ("a b/c+d", "a b/c+d")]
)
def test_plain_names(name: str, plain: str) -> None:
    assert check_name(name) == plain


@pytest.mark.parametrize(
    "name", ["", "/", "/etc/x", "..", "a/../b", "a//b", "a/./b", "a\nb", "a\0b", "x" * 256]
)
def test_unsafe_names(name: str) -> None:
    with pytest.raises(UnsafeMember):
        check_name(name)


def test_a_name_of_255_bytes_is_fine_and_256_is_not() -> None:
    assert check_name("d/" + "é" * 127 + "x") and check_name("x" * 255)
    with pytest.raises(UnsafeMember, match="over 255 bytes"):
        check_name("d/" + "é" * 128)


@pytest.mark.parametrize(
    ("links", "name", "inside"),
    [
        ({"lib/a": "b"}, "lib/a", "lib/b"),
        ({"lib/a": "../share/x"}, "lib/a", "share/x"),
        ({"lib/a": "../../x"}, "lib/a", None),
        ({"a": "/etc"}, "a", None),
        ({"a": "/opt/env/lib"}, "a", "lib"),  # absolute, into the final prefix
        ({"d": ".", "e": "d/.."}, "e", None),  # each harmless alone
        ({"lib64": "lib", "x": "lib64/../.."}, "x", None),
        ({"a": "b", "b": "a"}, "a", None),  # a loop
    ],
)
def test_symlinks_resolve_as_the_kernel_would(
    links: dict[str, str], name: str, inside: str | None
) -> None:
    assert resolve_link(name, links[name], links, "/opt/env") == inside


def test_nothing_is_written_through_a_symlink_already_there(tmp_path: Path) -> None:
    """Whatever the name rules miss, the writes themselves never follow a symlink."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "lib").symlink_to(outside)
    (root / "file").symlink_to(outside / "target")
    with ConfinedFolder(root) as tree:
        with pytest.raises(UnsafeMember, match="symlink or a file"):
            tree.create_file("lib/x", 0o644)
        with pytest.raises(UnsafeMember):
            tree.read_bytes("file")
        fd = tree.create_file("file", 0o644)  # replaces the symlink itself
        os.close(fd)
    assert list(outside.iterdir()) == [] and not (root / "file").is_symlink()


def test_modes_lose_world_write_and_setuid(tmp_path: Path) -> None:
    with ConfinedFolder(tmp_path) as tree:
        os.close(tree.create_file("a", 0o4777))
        tree.make_folder("d", 0o1777)
    assert (tmp_path / "a").stat().st_mode & 0o7777 == 0o775 & ~_umask()
    assert (tmp_path / "d").stat().st_mode & 0o7777 == 0o775


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize(
    "members",
    [
        [file("a", "x"), hardlink("b", "/etc/passwd")],
        [symlink("s", "../../outside"), file("t", "x")],
        [symlink("s", "/"), file("s/x", "x")],
        [file("../x", "x")],
        [device("dev", 1, 1)],
    ],
    ids=["hardlink-out", "symlink-out", "through-symlink", "dotdot", "device"],
)
def test_untrusted_tars_are_extracted_by_the_same_rules(
    members: list,
    tmp_path: Path,  # type: ignore[type-arg]
) -> None:
    """sdists and OCI base archives: tarfile parses, pack.confined writes (no tarfile filter)."""
    decoys = Decoys(tmp_path / "outside").make()
    before = decoys.snapshot()
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar_bytes(members))) as tar:
        with pytest.raises(UnsafeMember):
            extract_tar(tar, dest)
    assert decoys.snapshot() == before
    assert not (tmp_path / "x").exists() and snapshot(tmp_path / "dest") == snapshot(dest)
