"""How raw payloads are split into concurrent streams, and which folders are made first (the
streams themselves run against the real cluster in test_payloads and test_remote_store)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import zstandard

from pixi_deploy.store.payloads import EarlySender, PayloadGroup, _folders, _marker, shares


def _group(key: str, size: int, package_folders: tuple[str, ...] = ()) -> PayloadGroup:
    payload: Any = SimpleNamespace(size=size, folders=package_folders, shared_files=("a/b.txt",))
    return PayloadGroup(key, payload)


def test_streams_are_balanced_biggest_first_and_only_missing() -> None:
    groups = [_group(k, s) for k, s in [("a", 50), ("b", 40), ("c", 30), ("d", 20), ("e", 10)]]
    streams = shares(groups, {"a", "b", "c", "d"}, 2)
    assert [[g.key for g in s] for s in streams] == [["a", "d"], ["b", "c"]]
    assert shares(groups, {"e"}, 2) == [[groups[4]]]  # no empty stream
    assert shares(groups, set(), 2) == []


def test_folders_come_ahead_of_the_payload_and_never_outside_the_stage() -> None:
    group = _group("a", 1, ("lib/python3.11/site-packages/x", "bin", "../escape", "/abs"))
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(_folders(group.payload))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = [(m.name, m.type) for m in tar]
    assert members == [
        (name, tarfile.DIRTYPE)
        for name in [
            ".pd-objects",
            ".pd-staged",
            "bin",
            "lib",
            "lib/python3.11",
            "lib/python3.11/site-packages",
            "lib/python3.11/site-packages/x",
        ]
    ]


def test_early_sender_opens_a_stream_only_for_packages() -> None:
    started: list[list[str]] = []

    def start(groups: Iterable[PayloadGroup]) -> None:
        started.append([g.key for g in groups])

    sender = EarlySender(start, 2)
    sender.close()
    assert started == []  # an empty stream is an error on the cluster
    sender = EarlySender(start, 2)
    for key in "abc":
        sender.add(_group(key, 1))
    sender.close()
    assert sorted(k for stream in started for k in stream) == ["a", "b", "c"]


def test_a_failing_early_stream_is_recorded_not_raised() -> None:
    def start(groups: Iterable[PayloadGroup]) -> None:
        next(iter(groups))
        raise ConnectionError("dropped")

    sender = EarlySender(start, 1)
    sender.add(_group("a", 1))
    sender.close()
    assert [type(f) for f in sender.failures] == [ConnectionError]


def test_marker_makes_the_object_then_says_the_package_is_whole() -> None:
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(_marker(_group("k1", 1)))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = [(m.name, m.type, m.linkname) for m in tar]
    assert members == [
        (".pd-objects/k1", tarfile.DIRTYPE, ""),
        (".pd-objects/k1/a/b.txt", tarfile.LNKTYPE, "a/b.txt"),
        (".pd-staged/k1", tarfile.REGTYPE, ""),
    ]
