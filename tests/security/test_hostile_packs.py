"""Tampered packs (issue 13.3, 13.5, 13.10): each is refused by `unpack`, plain and zstd, read
from its file and streamed (standard input, an http:// URL: issue 18), with one line and exit
code 3, and leaves nothing at or beside the target; the decoys stay as they were.

Packs are rewritten member by member here: the metadata and the lock as bytes, the tar by hand
(`hostile.tar_bytes`), compressed with zstd or not.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from helpers.workspaces import CliResult
from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.workspace import load_workspace
from security.conftest import Decoys, Guard
from security.hostile import Member, tar_bytes
from security.streams import SOURCES, unpack_from

Metadata = dict[str, Any]


@pytest.fixture(scope="module")
def original(demo_ws: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = DownloadCache(tmp_path_factory.mktemp("cache"))
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    return write_pack(resolved, tmp_path_factory.mktemp("pack") / "p.tar", cache=cache).path


def _members(pack: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(pack) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]


def repack(
    pack: Path,
    out: Path,
    *,
    metadata: Callable[[Metadata], object] | None = None,
    lock: Callable[[bytes], bytes] | None = None,
    members: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]] | None = None,
    compress: bool = False,
    sync_lock_sha: bool = True,
) -> Path:
    """``pack`` with its metadata, lock or member list changed, written again by hand."""
    items = _members(pack)
    meta = json.loads(items[0][1])
    if lock is not None:
        items[1] = (items[1][0], lock(items[1][1]))
        if sync_lock_sha:  # a careful attacker keeps the metadata consistent
            meta["lock_sha256"] = hashlib.sha256(items[1][1]).hexdigest()
    if metadata is not None:
        metadata(meta)
    items[0] = (items[0][0], (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    if members is not None:
        items = members(items)
    data = tar_bytes([Member(name, body) for name, body in items])
    out.write_bytes(zstandard.ZstdCompressor().compress(data) if compress else data)
    return out


def _climb(path: Path) -> str:
    return "conda/" + "../" * 24 + str(path).lstrip("/")


def _tamperings(decoys: Path) -> dict[str, dict[str, Any]]:
    """name -> how to alter the pack (metadata, lock, members, junk) and what the error says."""
    first = lambda meta: meta["files"][0]  # noqa: E731

    def rename(to: str) -> dict[str, Any]:
        def meta_edit(meta: Metadata) -> None:
            first(meta)["path"] = to

        def member_edit(items: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
            return [items[0], items[1], (to, items[2][1]), *items[3:]]

        return {"metadata": meta_edit, "members": member_edit, "match": "member name"}

    return {
        "platform-changed": {
            "metadata": lambda m: m.update(platform="linux-aarch64"),
            "match": "lock and metadata disagree",
        },
        "sha256-null": {
            "metadata": lambda m: first(m).update(sha256=None),
            "match": "has no sha256",
        },
        "dependency-changed-in-lock": {
            "lock": lambda b: b.replace(b"libgreet >=1.2", b"libgreet >=0.1"),
            "sync": False,
            "match": "lock in .* does not match its metadata",
        },
        "record-sha256-changed-in-lock": {
            "lock": lambda b: b.replace(first_sha(b), b"0" * 64),
            "match": "lock and metadata disagree",
        },
        "corrupt-lock": {"lock": lambda b: b"\x00not a lock{{{", "match": "lock cannot be read"},
        "junk-appended": {"members": lambda items: items, "junk": True, "match": "bytes more"},
        "extra-member": {
            "members": lambda items: [*items, ("conda/extra.conda", b"x")],
            "match": "unexpected member",
        },
        "member-dotdot": rename(_climb(decoys / "planted")),
        "member-absolute": rename(str(decoys / "planted.conda")),
        "pypi-dotdot": rename("pypi/" + "../" * 24 + str(decoys / "planted.whl").lstrip("/")),
        "environment-not-a-string": {
            "metadata": lambda m: m.update(environment=5),
            "match": "not a valid pixi environment name",
        },
        "environment-with-newline": {
            "metadata": lambda m: m.update(environment="x\n$(touch marker)"),
            "match": "not a valid pixi environment name",
        },
        "size-not-a-number": {
            "metadata": lambda m: first(m).update(size="12"),
            "match": "has no size",
        },
        "format-1": {"metadata": lambda m: m.update(format_version=1), "match": "format version 1"},
    }


def first_sha(lock: bytes) -> bytes:
    line = next(x for x in lock.splitlines() if x.strip().startswith(b"sha256:"))
    return line.split(b":", 1)[1].strip()


TAMPERINGS = sorted(_tamperings(Path("/x")))


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
@pytest.mark.parametrize("name", TAMPERINGS)
def test_a_tampered_pack_is_refused(
    name: str,
    compress: bool,
    source: str,
    original: Path,
    decoys: Decoys,
    guarded: Callable[..., Guard],
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    how = _tamperings(decoys.root)[name]
    pack = repack(
        original,
        tmp_path / "bad.pack",
        metadata=how.get("metadata"),
        lock=how.get("lock"),
        members=how.get("members"),
        compress=compress,
        sync_lock_sha=how.get("sync", True),
    )
    if how.get("junk"):
        with pack.open("ab") as out:
            out.write(zstandard.ZstdCompressor().compress(b"junk" * 300) if compress else b"junk")
    with guarded():
        result = unpack_from(source, cli, pack, tmp_path / "target" / "env")
    assert result.exit_code == 3, (name, result.stderr)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert errors == lines[-1:], result.stderr
    # a file is checked whole before anything is installed; a stream only at its end, so the
    # step that announces the install may come first (never a second error line)
    assert len(lines) == 1 or (source != "file" and len(lines) == 2), result.stderr
    assert re.search(how["match"], errors[0]), errors[0]


def test_a_consistently_altered_pack_is_caught_by_its_digest(
    original: Path, guarded: Callable[..., Guard], tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """A changed dependency with the lock's checksum updated is a valid pack of its own, but
    not the one that was pinned: --expect-digest refuses it before anything is written."""
    digest = json.loads(cli("pack-info", original, "--json").stdout)["digest"]
    forged = repack(
        original, tmp_path / "forged.pack", lock=lambda b: b.replace(b">=1.2", b">=0.1")
    )
    assert json.loads(cli("pack-info", forged, "--json").stdout)["digest"] != digest
    for source in SOURCES:
        with guarded():
            result = unpack_from(
                source, cli, forged, tmp_path / "target" / "env", "--expect-digest", digest
            )
        assert result.exit_code == 3 and "not the expected" in result.stderr, source
    assert cli("unpack", original, tmp_path / "ok", "--expect-digest", digest).exit_code == 0
    bad = cli("unpack", original, tmp_path / "no", "--expect-digest", "sha256:1234")
    assert bad.exit_code == 3 and "is not a pack digest" in bad.stderr


def test_the_digest_is_the_same_compressed_or_not(
    demo_ws: Path, original: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    compressed = repack(original, tmp_path / "p.tar.zst", compress=True)
    plain = json.loads(cli("pack-info", original, "--json").stdout)["digest"]
    assert json.loads(cli("pack-info", compressed, "--json").stdout)["digest"] == plain
    assert cli("unpack", compressed, tmp_path / "env", "--expect-digest", plain).exit_code == 0


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.99])
def test_a_truncated_zstd_pack_says_truncated(
    original: Path, tmp_path: Path, cli: Callable[..., CliResult], cut: float
) -> None:
    """Issue 13.10: it used to say "empty file"."""
    data = zstandard.ZstdCompressor().compress(original.read_bytes())
    short = tmp_path / "short.tar.zst"
    short.write_bytes(data[: int(len(data) * cut)])
    result = cli("unpack", short, tmp_path / "env")
    assert result.exit_code == 3 and "truncated" in result.stderr, result.stderr
    assert "empty file" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.tar.zst"]


def test_pack_info_refuses_what_unpack_refuses(
    original: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    bad = repack(original, tmp_path / "bad.pack", metadata=lambda m: m.update(lock_hash=[1]))
    result = cli("pack-info", bad)
    assert result.exit_code == 3 and "lock_hash is not a sha256" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_metadata_member_too_big_to_read_is_refused(
    original: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    huge = tmp_path / "huge.pack"
    data = tar_bytes([Member("pixi-deploy-pack.json", b" " * (65 << 20))])
    huge.write_bytes(zstandard.ZstdCompressor().compress(data))
    result = cli("pack-info", huge)
    assert result.exit_code == 3 and "larger than" in result.stderr
