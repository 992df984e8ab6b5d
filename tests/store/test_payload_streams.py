"""How raw payloads are split into concurrent streams, and which folders are made first (the
streams themselves run against the real cluster in test_payloads and test_remote_store)."""

from __future__ import annotations

import io
import tarfile
from types import SimpleNamespace
from typing import Any

import zstandard

from pixi_deploy.store.payloads import PayloadGroup, _marker, folders, shares


def _group(key: str, size: int, package_folders: tuple[str, ...] = ()) -> PayloadGroup:
    payload: Any = SimpleNamespace(size=size, folders=package_folders, shared_files=("a/b.txt",))
    return PayloadGroup(key, payload)


def test_streams_are_balanced_biggest_first_and_only_missing() -> None:
    groups = [_group(k, s) for k, s in [("a", 50), ("b", 40), ("c", 30), ("d", 20), ("e", 10)]]
    streams = shares(groups, {"a", "b", "c", "d"}, 2)
    assert [[g.key for g in s] for s in streams] == [["a", "d"], ["b", "c"]]
    assert shares(groups, {"e"}, 2) == [[groups[4]]]  # no empty stream
    assert shares(groups, set(), 2) == []


def test_folders_are_made_for_every_payload_but_never_outside_the_stage() -> None:
    groups = [
        _group("a", 1, ("lib", "lib/python3.11/site-packages/x")),
        _group("b", 1, ("bin", "../escape", "/abs")),
    ]
    assert folders(groups) == [
        ".pd-objects",
        ".pd-staged",
        "bin",
        "lib",
        "lib/python3.11/site-packages/x",
    ]


def test_marker_makes_the_object_then_says_the_package_is_whole() -> None:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(_marker(_group("k1", 1)))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = [(m.name, m.type, m.linkname) for m in tar]
    assert members == [
        (".pd-objects/k1", tarfile.DIRTYPE, ""),
        (".pd-objects/k1/a/b.txt", tarfile.LNKTYPE, "a/b.txt"),
        (".pd-staged/k1", tarfile.REGTYPE, ""),
    ]
