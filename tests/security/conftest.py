"""Fixtures of the security suite: decoy files outside every target, snapshots that show
whether anything outside changed, and workspaces whose lock holds a hostile package."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rattler
from rattler.index import index_fs

from pixi_deploy.testing.channel import PackageSpec, build_package, lock_workspace
from security.cases import ALL_CASES
from security.hostile import TEXT_PLACEHOLDER, HostilePackage

PLATFORM = "linux-64"
#: A well-formed package beside the hostile one, so the environment is not just the attack.
BENIGN = PackageSpec(
    name="benign",
    version="1.0",
    subdir=PLATFORM,
    files={"share/benign/data.txt": "plain data\n"},
)


Snapshot = dict[str, tuple[object, ...]]


def snapshot(root: Path, skip: tuple[Path, ...] = ()) -> Snapshot:
    """Everything under ``root`` (``root`` included): type, mode, owner, link count, mtime and
    content (or link target) of each entry; folders in ``skip`` are left out."""
    found: Snapshot = {}
    for path in [root, *sorted(root.rglob("*"))]:
        if any(path == s or s in path.parents for s in skip):
            continue
        info = os.lstat(path)
        kind = stat.S_IFMT(info.st_mode)
        if stat.S_ISREG(info.st_mode):
            content: object = hashlib.sha256(path.read_bytes()).hexdigest()
        elif stat.S_ISLNK(info.st_mode):
            content = os.readlink(path)
        else:
            content = None
        times = info.st_mtime_ns if not stat.S_ISDIR(info.st_mode) else None
        found[str(path.relative_to(root))] = (
            kind,
            stat.S_IMODE(info.st_mode),
            info.st_uid,
            info.st_gid,
            info.st_nlink,
            times,
            content,
        )
    return found


@dataclass
class Decoys:
    """Files an attack would reach: a root-only secret (the issue's /etc/shadow), a text file
    carrying the prefix placeholder (what a patch would rewrite) and a folder."""

    root: Path
    owner: int = 0

    def make(self) -> Decoys:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        (self.root / "dir").mkdir(exist_ok=True)
        secret = self.root / "secret"
        secret.write_text("top secret\n")
        os.chmod(secret, 0o600)
        victim = self.root / "victim.txt"
        victim.write_text(f"keep me: {TEXT_PLACEHOLDER}\n")
        os.chmod(victim, 0o644)
        for path in (self.root, self.root / "dir", secret, victim):
            os.chown(path, self.owner, self.owner)
        return self

    def snapshot(self) -> Snapshot:
        return snapshot(self.root)


@dataclass
class HostileWorkspaces:
    """One locked workspace per case of `cases.ALL_CASES`, built on first use, for one set of
    decoys (the packages name the decoys' absolute paths)."""

    decoys: Decoys
    folder: Path
    built: dict[str, Path] = field(default_factory=dict)

    def workspace(self, case: str) -> Path:
        if case not in self.built:
            self.built[case] = make_workspace(self.folder / case, ALL_CASES[case](self.decoys.root))
        return self.built[case]


def make_workspace(where: Path, packages: list[HostilePackage], name: str = "hostile") -> Path:
    """A channel with ``packages`` (and `BENIGN`), indexed by rattler, and a workspace whose
    pixi.lock locks them all for linux-64 (their sha256 is the lock's: the attack is in the
    package, not a corrupt download)."""
    channel = where / "channel"
    (channel / "noarch").mkdir(parents=True, exist_ok=True)
    build_package(BENIGN, channel / PLATFORM)
    for package in packages:
        package.build_into(channel / package.subdir)
    for subdir in (PLATFORM, "noarch"):
        asyncio.run(
            index_fs(channel, target_platform=rattler.Subdir(subdir), write_zst=False, force=True)
        )
    names = sorted({p.name for p in packages} | {BENIGN.name})
    lock_workspace(where / "ws", channel, {"default": names}, [PLATFORM], name=name)
    return where / "ws"


@pytest.fixture(scope="module")
def decoys_root() -> Iterator[Path]:
    """In /tmp itself (not pytest's 0700 folder), so the cluster's user can reach it too."""
    folder = Path(tempfile.mkdtemp(prefix="pd-decoys-", dir="/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile(decoys_root: Path, tmp_path_factory: pytest.TempPathFactory) -> HostileWorkspaces:
    """Hostile workspaces aimed at root-owned decoys (what a root install must not touch)."""
    decoys = Decoys(decoys_root / "root").make()
    return HostileWorkspaces(decoys, tmp_path_factory.mktemp("hostile"))


@pytest.fixture
def decoys(hostile: HostileWorkspaces) -> Decoys:
    return hostile.decoys.make()  # fresh, whatever an earlier test did


@pytest.fixture
def guarded(tmp_path: Path, decoys: Decoys) -> Callable[..., Guard]:
    """``with guarded(skip=...)``: snapshots the decoys and ``tmp_path`` (less ``skip``) and
    asserts on leaving that neither changed."""

    def make(*skip: Path) -> Guard:
        return Guard(decoys, tmp_path, skip)

    return make


class Guard:
    def __init__(self, decoys: Decoys, tree: Path, skip: tuple[Path, ...]) -> None:
        self.decoys, self.tree, self.skip = decoys, tree, skip

    def __enter__(self) -> Guard:
        self.before_decoys = self.decoys.snapshot()
        self.before_tree = snapshot(self.tree, self.skip)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert self.decoys.snapshot() == self.before_decoys, "a decoy outside the target changed"
        after = snapshot(self.tree, self.skip)
        added = sorted(set(after) - set(self.before_tree))
        assert not added, f"left behind: {added[:5]}"
        changed = sorted(k for k in after if after[k] != self.before_tree.get(k))
        gone = sorted(set(self.before_tree) - set(after))
        assert not changed and not gone, (
            f"changed beside the target: {changed[:5]}, gone: {gone[:5]}"
        )
