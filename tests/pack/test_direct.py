"""The direct installer against rattler's own: the same tree, the same conda-meta.

Every check lays out the same records twice for the same final path, once with
``rattler.install`` alone and once with ``direct=True``, and compares file by file: paths,
types, modes, contents, link targets, and each ``conda-meta`` record. The channel has what the
direct path must get right (text and binary placeholders, a shebang, symlinks, activation
scripts) and what it must hand to rattler (``.tar.bz2``, ``noarch: python``, a shebang that
outgrows the kernel's limit, two packages owning one path).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import rattler

from helpers.linking import NAMES, linking_specs
from helpers.processes import alive, children, gone_within
from pixi_deploy.errors import PackError
from pixi_deploy.pack import writers
from pixi_deploy.pack.archives import ArchiveSlice
from pixi_deploy.pack.direct import DeferredPayload, DirectResult, install_direct
from pixi_deploy.pack.layout import lay_out_prefix
from pixi_deploy.pack.linking import replace_cstrings
from pixi_deploy.pack.untar import UnusualMember
from pixi_deploy.testing.channel import PackageSpec, build_channel, lock_workspace
from pixi_deploy.workspace import ResolvedEnvironment, load_workspace

PLATFORM = "linux-64"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> ResolvedEnvironment:
    root = tmp_path_factory.mktemp("direct")
    build_channel(root / "channel", linking_specs(PLATFORM))
    lock_workspace(root / "ws", root / "channel", {"default": NAMES}, [PLATFORM])
    return load_workspace(root / "ws" / "pixi.toml").resolve("default", PLATFORM)


def _archives(resolved: ResolvedEnvironment) -> dict[str, Path]:
    return {r.file_name: Path(r.url.removeprefix("file://")) for r in resolved.conda_records}


def _lay_out(
    resolved: ResolvedEnvironment, staging: Path, final: Path, **kwargs: object
) -> list[DeferredPayload]:
    return lay_out_prefix(
        list(resolved.conda_records),
        kwargs.pop("archives", None) or _archives(resolved),  # type: ignore[arg-type]
        [],
        staging=staging,
        final=final,
        platform=PLATFORM,
        python_version="3.11",
        cache_dir=staging.parent / f"{staging.name}-cache",
        **kwargs,  # type: ignore[arg-type]
    )


def _tree(prefix: Path) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    for path in sorted(prefix.rglob("*")):
        rel = str(path.relative_to(prefix))
        mode = os.lstat(path).st_mode
        if rel.startswith("conda-meta/"):
            continue
        if stat.S_ISLNK(mode):
            out[rel] = ("link", 0, os.readlink(path).encode())
        elif stat.S_ISDIR(mode):
            out[rel] = ("dir", stat.S_IMODE(mode), b"")
        else:
            out[rel] = ("file", stat.S_IMODE(mode), path.read_bytes())
    return out


def _meta(prefix: Path) -> dict[str, dict[str, object]]:
    records = {}
    for path in sorted((prefix / "conda-meta").glob("*.json")):
        records[path.name] = json.loads(path.read_text())
    return records


@pytest.mark.parametrize(
    ("final_name", "forked"), [("env", True), ("x" * 140, True), ("env", False)]
)
def test_direct_layout_equals_rattlers(
    resolved: ResolvedEnvironment,
    tmp_path: Path,
    final_name: str,
    forked: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``forked=False``: the payloads are written in this process, as where there is no fork."""
    monkeypatch.setattr(writers, "_CAN_FORK", forked)
    final = Path("/opt/site") / final_name  # the long one pushes shebangs past 127 bytes
    _lay_out(resolved, tmp_path / "by-rattler", final)
    _lay_out(resolved, tmp_path / "direct", final, direct=True)
    expected, got = _tree(tmp_path / "by-rattler"), _tree(tmp_path / "direct")
    assert got.keys() == expected.keys()
    for path in expected:
        assert got[path] == expected[path], path
    assert _meta(tmp_path / "direct") == _meta(tmp_path / "by-rattler")
    assert (tmp_path / "direct/conda-meta/history").is_file()
    # the placeholder really was patched, the symlinks really are symlinks
    assert str(final).encode() in (tmp_path / "direct/lib/libshared.so.1.2.0").read_bytes()
    assert os.readlink(tmp_path / "direct/lib/libshared.so") == "libshared.so.1"
    # written once, not hard-linked from rattler's cache (rattler left the package alone)
    readme = "lib/python3.11/site-packages/README.txt"  # python's package always goes direct
    assert (tmp_path / "direct" / readme).stat().st_nlink == 1
    assert (tmp_path / "by-rattler" / readme).stat().st_nlink == 2


@pytest.mark.parametrize("writers_setting", [None, "0", "2"])
def test_a_small_environment_is_written_without_forking_unless_writers_are_asked_for(
    resolved: ResolvedEnvironment,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    writers_setting: str | None,
) -> None:
    """Below `INLINE_BELOW_BYTES` of archives, forking the writers costs more than it saves;
    ``$PIXI_DEPLOY_WRITERS`` overrides the choice either way. The layout is the same."""
    if writers_setting is None:
        monkeypatch.delenv("PIXI_DEPLOY_WRITERS", raising=False)
    else:
        monkeypatch.setenv("PIXI_DEPLOY_WRITERS", writers_setting)
    assert sum(p.stat().st_size for p in _archives(resolved).values()) < writers.INLINE_BELOW_BYTES
    forks = []
    real_fork = os.fork

    def counted_fork() -> int:
        forks.append(1)
        return real_fork()

    monkeypatch.setattr(os, "fork", counted_fork)
    final = Path("/opt/env")
    _lay_out(resolved, tmp_path / "direct", final, direct=True)
    assert len(forks) == (2 if writers_setting == "2" else 0)
    monkeypatch.setattr(os, "fork", real_fork)
    _lay_out(resolved, tmp_path / "by-rattler", final)
    assert _tree(tmp_path / "direct") == _tree(tmp_path / "by-rattler")
    assert _meta(tmp_path / "direct") == _meta(tmp_path / "by-rattler")


def test_direct_records_keep_the_locks_url(resolved: ResolvedEnvironment, tmp_path: Path) -> None:
    _lay_out(resolved, tmp_path / "p", Path("/opt/env"), direct=True)
    urls = {r.name.normalized: r.url for r in resolved.conda_records}
    record = json.loads((tmp_path / "p/conda-meta/libshared-1.2.0-h0_0.json").read_text())
    assert record["url"] == urls["libshared"]
    # and rattler read it back as an installed package
    assert rattler.PrefixRecord.from_path(tmp_path / "p/conda-meta/libshared-1.2.0-h0_0.json")


def test_what_goes_to_rattler(resolved: ResolvedEnvironment, tmp_path: Path) -> None:
    left = install_direct(
        list(resolved.conda_records), _archives(resolved), staging=tmp_path / "p", final=tmp_path
    ).left
    assert sorted(r.name.normalized for r in left) == ["oldformat", "purepy"]


def test_long_shebang_goes_to_rattler(resolved: ResolvedEnvironment, tmp_path: Path) -> None:
    long_final = Path("/opt") / ("y" * 130)
    left = install_direct(
        list(resolved.conda_records), _archives(resolved), staging=tmp_path / "p", final=long_final
    ).left
    names = sorted(r.name.normalized for r in left)
    assert names == ["libshared", "oldformat", "purepy"]  # python's #! line has no prefix
    assert not (tmp_path / "p/lib/libshared.so.1.2.0").exists()  # its files were taken back


def test_archives_read_in_place_from_a_pack_slice(
    resolved: ResolvedEnvironment, tmp_path: Path
) -> None:
    blob = tmp_path / "blob"
    slices: dict[str, ArchiveSlice] = {}
    with blob.open("wb") as out:
        out.write(b"\0" * 1000)  # the archives do not start at offset 0, as in a pack
        for name, path in _archives(resolved).items():
            data = path.read_bytes()
            slices[name] = ArchiveSlice(blob, out.tell(), len(data), name)
            out.write(data + b"\xff" * 17)
    _lay_out(resolved, tmp_path / "by-rattler", Path("/opt/env"))
    _lay_out(resolved, tmp_path / "sliced", Path("/opt/env"), direct=True, archives=slices)
    assert _tree(tmp_path / "sliced") == _tree(tmp_path / "by-rattler")


def test_a_payload_the_reader_cannot_read_stops_the_install(
    resolved: ResolvedEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No tarfile fallback any more (its filter is bypassable on Python < 3.11.13): a payload
    our reader cannot parse is a broken package, named in a one-line error."""

    def unusual(*args: object, **kwargs: object) -> None:
        raise UnusualMember("as if every member were unusual")

    monkeypatch.setattr(writers, "extract_payload", unusual)
    with pytest.raises(UnusualMember, match=r"^package \S+\.conda: as if every member"):
        _lay_out(resolved, tmp_path / "p", Path("/opt/env"), direct=True)


def test_binary_placeholder_is_padded_in_place() -> None:
    old = b"/placeholder_long_enough"
    data = b"A\0" + old + b"/lib:" + old + b"/bin\0tail" + old
    new = replace_cstrings(data, old, b"/short", Path("f"))
    assert len(new) == len(data)
    assert new == b"A\0/short/lib:/short/bin" + b"\0" * (
        2 * (len(old) - 6)
    ) + b"\0tail/short" + b"\0" * (len(old) - 6)


def test_binary_placeholder_longer_prefix_is_a_clear_error() -> None:
    with pytest.raises(PackError, match="longer than"):
        replace_cstrings(b"x/ph\0", b"/ph", b"/much/longer", Path("libx.so"))


def test_a_slice_is_verified_before_it_is_used(
    resolved: ResolvedEnvironment, tmp_path: Path
) -> None:
    slices = {
        name: ArchiveSlice(path, 0, path.stat().st_size, name, "0" * 64)
        for name, path in _archives(resolved).items()
    }
    with pytest.raises(PackError) as raised:  # found by a forked writer, raised here
        _lay_out(resolved, tmp_path / "p", Path("/opt/env"), direct=True, archives=slices)
    assert raised.value.message.endswith("is corrupt (sha256 mismatch)")
    assert raised.value.hint == "re-create or re-download the pack"  # kept across processes


def test_deferred_payloads_complete_the_staged_prefix(
    resolved: ResolvedEnvironment, tmp_path: Path
) -> None:
    """What the remote store does on the cluster, done here: unpack each deferred payload under
    the staged prefix without overwriting what was staged; the result is the full layout."""
    import io
    import tarfile

    import zstandard

    final = Path("/opt/env")
    _lay_out(resolved, tmp_path / "full", final, direct=True)
    deferred = _lay_out(resolved, tmp_path / "staged", final, defer_payloads=True)
    assert sorted(d.record.name.normalized for d in deferred) == ["libshared", "python"]
    staged_before = _tree(tmp_path / "staged")
    assert "share/libshared/data.txt" not in staged_before  # the bulk stayed packed
    assert staged_before["bin/shared-tool"] == _tree(tmp_path / "full")["bin/shared-tool"]
    for payload in deferred:
        with payload.archive.open("rb") as source:
            source.seek(payload.offset)
            data = (
                zstandard.ZstdDecompressor().decompressobj().decompress(source.read(payload.size))
            )
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar:
                if not os.path.lexists(tmp_path / "staged" / member.name):
                    tar.extract(member, tmp_path / "staged", filter="tar")
    assert _tree(tmp_path / "staged") == _tree(tmp_path / "full")
    assert _meta(tmp_path / "staged") == _meta(tmp_path / "full")


def _install_direct_of(specs: list[PackageSpec], tmp_path: Path) -> DirectResult:
    """Lock ``specs`` and install them all with the direct installer into ``tmp_path/p``."""
    build_channel(tmp_path / "ch", specs)
    names = [spec.name for spec in specs]
    lock_workspace(tmp_path / "ws", tmp_path / "ch", {"default": names}, [PLATFORM])
    resolved = load_workspace(tmp_path / "ws" / "pixi.toml").resolve("default", PLATFORM)
    return _install_all(resolved, tmp_path)


def _install_all(
    resolved: ResolvedEnvironment, tmp_path: Path, archives: dict[str, Path] | None = None
) -> DirectResult:
    """Every record, with the direct installer, into ``tmp_path/p``."""
    return install_direct(
        list(resolved.conda_records),
        archives or _archives(resolved),
        staging=tmp_path / "p",
        final=tmp_path,
    )


def test_packages_sharing_a_path_all_go_to_rattler(tmp_path: Path) -> None:
    """Two packages owning one path: rattler's clobber rules decide, not the direct path."""
    specs = [
        PackageSpec(name="first", version="1", files={"share/same.txt": "first\n"}),
        PackageSpec(name="second", version="1", files={"share/same.txt": "second\n"}),
    ]
    done = _install_direct_of(specs, tmp_path)
    assert sorted(r.name.normalized for r in done.left) == ["first", "second"]
    assert not (tmp_path / "p" / "share" / "same.txt").exists()


def test_files_beneath_another_packages_symlink_all_go_to_rattler(tmp_path: Path) -> None:
    """Writers make symlinks only at the end, so a package writing through another's symlink
    is found from paths.json first and the whole environment goes to rattler."""
    specs = [
        PackageSpec(
            name="linker",
            version="1",
            files={"lib/real/keep.txt": "real\n"},
            symlinks={"lib64": "lib/real"},
        ),
        PackageSpec(name="through", version="1", files={"lib64/libthrough.txt": "x\n"}),
    ]
    done = _install_direct_of(specs, tmp_path)
    assert sorted(r.name.normalized for r in done.left) == ["linker", "through"]
    assert list((tmp_path / "p").iterdir()) == []  # nothing half-written is left for rattler


def test_a_failing_writer_stops_the_install_with_its_error(
    resolved: ResolvedEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")  # raised in a forked writer

    monkeypatch.setattr(writers, "extract_payload", full)
    before = children()
    with pytest.raises(OSError, match="No space left") as raised:
        _install_all(resolved, tmp_path)
    assert raised.value.errno == 28  # the caller's ENOSPC handling sees the real error
    assert children() == before  # every writer is gone once the error is raised


def test_a_writer_killed_mid_install_is_a_clear_error(
    resolved: ResolvedEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # the OOM killer, say

    monkeypatch.setattr(writers, "extract_payload", killed)
    before = children()
    with pytest.raises(PackError, match="writer process stopped unexpectedly.*SIGKILL"):
        _install_all(resolved, tmp_path)
    assert children() == before


def test_an_error_that_cannot_be_pickled_still_reaches_the_caller(
    resolved: ResolvedEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class LocalError(Exception):  # a local class: pickle cannot name it
        pass

    def odd(*args: object, **kwargs: object) -> None:
        raise LocalError("something odd")

    monkeypatch.setattr(writers, "extract_payload", odd)
    with pytest.raises(PackError, match="LocalError: something odd"):
        _install_all(resolved, tmp_path)


def test_a_payload_that_does_not_decompress_is_a_clear_error(
    resolved: ResolvedEnvironment, tmp_path: Path
) -> None:
    broken: dict[str, Path] = {}
    for name, path in _archives(resolved).items():
        broken[name] = tmp_path / name
        data = bytearray(path.read_bytes())
        if name.endswith(".conda"):
            with zipfile.ZipFile(path) as archive:
                info = next(i for i in archive.infolist() if i.filename.startswith("pkg-"))
            header = data[info.header_offset : info.header_offset + 30]
            start = info.header_offset + 30 + int.from_bytes(header[26:28], "little")
            start += int.from_bytes(header[28:30], "little")
            data[start : start + 4] = b"oops"  # no longer zstd's magic number
        broken[name].write_bytes(data)
    with pytest.raises(PackError, match=r"\.conda cannot be decompressed \(.*\)") as raised:
        _install_all(resolved, tmp_path, broken)
    assert raised.value.hint == "re-create the pack, or re-download the package"


def test_a_writer_dies_with_its_parent_even_on_kill_9(tmp_path: Path) -> None:
    """A writer left running would go on writing into a work folder that a later run may be
    removing; the kernel kills it with its parent (PR_SET_PDEATHSIG)."""
    code = (
        "import sys, time; from pixi_deploy.pack import writers;"
        "writers._perform = lambda *args: time.sleep(60);"  # a job that takes its time
        "worker = writers._ForkedWorker(); worker.send('a job');"
        "print(worker.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    writer = int(parent.stdout.readline())
    assert alive(writer)
    parent.kill()
    parent.wait()
    assert gone_within(writer, 10)  # else it would sleep on for a minute


def test_when_fork_fails_the_payloads_are_written_here(
    resolved: ResolvedEnvironment, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # a process ulimit

    _lay_out(resolved, tmp_path / "by-rattler", Path("/opt/env"))
    before = children()
    monkeypatch.setattr(os, "fork", no_fork)
    _lay_out(resolved, tmp_path / "direct", Path("/opt/env"), direct=True)
    assert _tree(tmp_path / "direct") == _tree(tmp_path / "by-rattler")
    assert children() == before


def test_an_application_that_ignores_sigchld_still_gets_the_environment(
    resolved: ResolvedEnvironment, tmp_path: Path
) -> None:
    """With SIGCHLD ignored the kernel reaps the writers itself, before we can."""
    _lay_out(resolved, tmp_path / "by-rattler", Path("/opt/env"))
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        _lay_out(resolved, tmp_path / "direct", Path("/opt/env"), direct=True)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert _tree(tmp_path / "direct") == _tree(tmp_path / "by-rattler")
