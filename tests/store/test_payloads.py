"""Conda payloads shipped as they are and unpacked on the cluster (store/payloads.py), against
the real sshd on 127.0.0.1: the environment they give must be the one laid out here, file for
file, and the shared objects must never be patched through a hard link."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from helpers.linking import NAMES, linking_specs
from pixi_deploy.pack import DownloadCache
from pixi_deploy.pack.layout import lay_out_environment
from pixi_deploy.progress import NullReporter
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import (
    TEXT_PLACEHOLDER,
    build_channel,
    lock_workspace,
)
from pixi_deploy.transport import Transport
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.cluster
PLATFORM = "linux-64"

# one listing line per path: type, mode, and content hash or link target
LISTING = r"""
cd "$1" || exit 1
find . -mindepth 1 -type l -printf 'l %P %l\n'
find . -mindepth 1 -type d -printf 'd %P %m\n'
find . -mindepth 1 -type f -printf '%P\n' | sort | while IFS= read -r f; do
  printf 'f %s %s %s\n' "$f" "$(stat -c %a "$f")" "$(sha256sum < "$f" | cut -c1-64)"
done
"""


def _listing(text: str) -> dict[str, str]:
    entries = {}
    for line in text.splitlines():
        kind, path, rest = line.split(" ", 2)
        if path != "deployment_metadata.json" and not path.startswith("conda-meta/"):
            entries[path] = f"{kind} {rest}"
    return entries


def test_raw_payloads_give_the_environment_laid_out_here(
    ssh_settings, test_cluster, tmp_path: Path
) -> None:
    build_channel(tmp_path / "ch", linking_specs(PLATFORM, interpreter="/usr/bin/python3.11"))
    lock_workspace(tmp_path / "ws", tmp_path / "ch", {"default": NAMES}, [PLATFORM])
    ws = load_workspace(tmp_path / "ws")
    cache = DownloadCache(tmp_path / "cache")
    base = f"{test_cluster.base_path}/p-{uuid.uuid4().hex[:8]}"
    with Transport(ssh_settings) as t:
        store = RemoteStore(t, base)
        deployed = store.deploy(ws, cache=cache)
        sent = store.last_transfer
        final = deployed.deployment_path
        remote = _listing(t.run_script(LISTING, [final]).stdout)
        remote_meta = {
            name: json.loads(t.read_bytes(f"{final}/conda-meta/{name}"))
            for name in t.run_script('cd "$1/conda-meta" && ls *.json', [final]).stdout.split()
        }
        # objects hold only what every environment shares: no file that embeds the prefix
        in_objects = t.run_script(
            'cd "$1/objects" && find . -path "./.incoming-*" -prune -o -type f -print', [base]
        ).stdout.split()
        links = t.run(["stat", "-c", "%h", f"{final}/share/libshared/data.txt"]).stdout
        tool = t.run(["cat", f"{final}/bin/shared-tool"]).stdout
    local = tmp_path / "local"
    resolved = ws.resolve("default", PLATFORM)
    lay_out_environment(resolved, cache, staging=local, final=Path(final), reporter=NullReporter())
    here = subprocess.run(
        ["sh", "-c", LISTING, "sh", str(local)], capture_output=True, text=True, check=True
    ).stdout
    assert remote == _listing(here)
    local_meta = {p.name: json.loads(p.read_text()) for p in (local / "conda-meta").glob("*.json")}
    assert remote_meta == local_meta
    assert sent.groups_sent == sent.groups_total
    assert sent.raw_payloads_sent == 2  # python, libshared (not the .tar.bz2, not noarch)
    assert len(remote) > 15 and remote["lib/libshared.so"] == "l libshared.so.1"
    assert any(f.endswith("/share/libshared/data.txt") for f in in_objects)
    assert not any(f.endswith(("/bin/shared-tool", "/libshared.so.1.2.0")) for f in in_objects)
    assert f"#!{final}/bin/python" in tool and TEXT_PLACEHOLDER not in tool
    assert int(links) == 2  # object + environment
    assert "activate.d/libshared.sh" in (local / "activate.sh").read_text()  # and so remotely


def test_a_payload_stream_that_breaks_while_laying_out_is_sent_again_afterwards(
    ssh_settings, test_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early streams are an optimisation: if one breaks (a dropped connection), what the
    cluster still lacks is asked for again after the layout, and only that is sent again."""
    import pixi_deploy.store.remote as remote_module
    from pixi_deploy.store.payloads import EarlySender, stream_payloads

    class BreakingSender(EarlySender):
        """One stream sends its first package whole, then drops; the other drops before
        sending anything, so its package must be sent again after the layout."""

        def __init__(self, start, streams):  # type: ignore[no-untyped-def]
            def drop(groups):  # type: ignore[no-untyped-def]
                first = next(iter(groups))
                with lock:
                    whole = not opened
                    opened.append(first.key)
                if whole:
                    yield first
                raise ConnectionError("connection dropped")

            super().__init__(lambda groups: start(drop(groups)), streams)
            senders.append(self)

    lock = threading.Lock()
    opened: list[str] = []
    senders: list[EarlySender] = []
    streamed: list[str] = []

    def spy(send, groups, advance):  # type: ignore[no-untyped-def]
        def seen(groups):  # type: ignore[no-untyped-def]
            for group in groups:
                streamed.append(group.key)
                yield group

        stream_payloads(send, seen(groups), advance)

    monkeypatch.setattr(remote_module, "EarlySender", BreakingSender)
    monkeypatch.setattr(remote_module, "stream_payloads", spy)
    build_channel(tmp_path / "ch", linking_specs(PLATFORM, interpreter="/usr/bin/python3.11"))
    lock_workspace(tmp_path / "ws", tmp_path / "ch", {"default": NAMES}, [PLATFORM])
    ws = load_workspace(tmp_path / "ws")
    base = f"{test_cluster.base_path}/p-{uuid.uuid4().hex[:8]}"
    with Transport(ssh_settings) as t:
        store = RemoteStore(t, base)
        deployed = store.deploy(ws, cache=DownloadCache(tmp_path / "cache"))
        sent = store.last_transfer
        final = deployed.deployment_path
        tool = t.run([f"{final}/bin/shared-tool"], check=False)
        incoming = t.run_script('ls -d "$1"/objects/.incoming-* 2>/dev/null || true', [base]).stdout
    assert [type(f) for s in senders for f in s.failures] == [ConnectionError] * 2
    assert sent.raw_payloads_sent == 2 and sent.groups_sent == sent.groups_total
    # the dropped one is sent afterwards (and the other too if it had not reached the cluster)
    assert set(streamed) == set(opened) and streamed.count(opened[1]) == 1
    assert tool.exit_status == 0, tool.stderr
    assert tool.stdout.strip() == final
    assert incoming.strip() == ""
