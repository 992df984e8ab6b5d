"""Packs: write, verify, unpack offline, run; and every way a pack or its target can be bad."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from helpers.files import age
from pixi_deploy.errors import FetchError, PackError, StoreError
from pixi_deploy.pack import DownloadCache, read_metadata, unpack, write_pack
from pixi_deploy.pack.format import METADATA_NAME
from pixi_deploy.testing.channel import BINARY_PLACEHOLDER, TEXT_PLACEHOLDER
from pixi_deploy.workspace import load_workspace


def _run_in(prefix: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", f'. "{prefix}/activate.sh" && {command}'],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture(scope="module")
def linux64_pack(
    demo_ws: Path, cache: DownloadCache, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    return write_pack(resolved, tmp_path_factory.mktemp("packs") / "default.tar", cache=cache).path


def test_pack_unpack_run_linux64(linux64_pack: Path, tmp_path: Path) -> None:
    target = tmp_path / "env+1@x,y"
    result = unpack(linux64_pack, target)
    assert result.prefix == target
    run = _run_in(target, "greet && echo CONDA_PREFIX=$CONDA_PREFIX")
    assert run.returncode == 0, run.stderr
    assert f"hello from greet 1.0.0 at {target}" in run.stdout
    assert f"config: {target}/etc/greet.conf" in run.stdout  # set by an activate.d script
    assert f"CONDA_PREFIX={target}" in run.stdout
    # no placeholder survives, text or binary; the binary file keeps its length
    for path in target.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.parent.name != "conda-meta":
            data = path.read_bytes()
            assert TEXT_PLACEHOLDER.encode() not in data, path
            assert BINARY_PLACEHOLDER.encode() not in data, path
    libgreet = (target / "lib" / "libgreet.so").read_bytes()
    assert f"{target}/share/libgreet/README".encode() + b"\0" in libgreet
    assert not (target / "CACHEDIR.TAG").exists()
    # nothing but the target was created next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env+1@x,y"]


@pytest.mark.parametrize("name", ["with space", "q'uote", 'd"q', "$(touch x)", "`x`", "a\\b"])
def test_paths_environments_cannot_live_at_are_refused(
    linux64_pack: Path, tmp_path: Path, cli, name: str
) -> None:
    result = cli("unpack", linux64_pack, tmp_path / name)
    assert result.exit_code == 5
    assert "conda environments cannot live under" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_pack_metadata_and_checksums(linux64_pack: Path, demo_ws: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    metadata = read_metadata(linux64_pack)
    assert metadata.environment == "default" and metadata.platform == "linux-64"
    assert metadata.lock_hash == resolved.lock_hash
    assert metadata.format_version == 2 and metadata.tool_version
    with tarfile.open(linux64_pack) as tar:
        names = tar.getnames()
        assert names[0] == METADATA_NAME
        lock = tar.extractfile(names[1]).read()  # type: ignore[union-attr]
        assert hashlib.sha256(lock).hexdigest() == metadata.lock_sha256
        for entry in metadata.files:
            data = tar.extractfile(entry.path).read()  # type: ignore[union-attr]
            assert hashlib.sha256(data).hexdigest() == entry.sha256
            assert len(data) == entry.size
    assert {f.name for f in metadata.files} == {r.name.normalized for r in resolved.conda_records}


def test_packs_are_reproducible(demo_ws: Path, cache: DownloadCache, tmp_path: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("extra", "linux-64")
    a = write_pack(resolved, tmp_path / "a.tar", cache=cache).path.read_bytes()
    b = write_pack(resolved, tmp_path / "b.tar", cache=cache).path.read_bytes()
    assert a == b


def test_aarch64_pack_made_here(demo_ws: Path, cache: DownloadCache, tmp_path: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-aarch64")
    packed = write_pack(resolved, tmp_path / "arm.tar.zst", cache=cache, compression="zstd")
    assert packed.path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    assert read_metadata(packed.path).platform == "linux-aarch64"
    # laying it out here works too (no link scripts run); the records say aarch64
    result = unpack(packed.path, tmp_path / "arm")
    records = [json.loads(p.read_text()) for p in (result.prefix / "conda-meta").glob("*.json")]
    assert {r["subdir"] for r in records} == {"linux-aarch64", "noarch"}


def test_cli_pack_unpack_json(
    demo_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "p.tar.zst"
    result = cli(
        "pack",
        "--manifest-path",
        demo_ws,
        "-e",
        "extra",
        "-p",
        "linux-64",
        "--compress",
        "-o",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    packed = json.loads(result.stdout)
    assert packed["pack"] == str(out) and packed["files"] == 5
    assert packed["digest"].startswith("sha256:") and len(packed["digest"]) == 71
    info = cli("pack-info", out, "--json")
    assert json.loads(info.stdout)["digest"] == packed["digest"]
    result = cli("unpack", out, tmp_path / "env", "--json", "--expect-digest", packed["digest"])
    assert result.exit_code == 0, result.stderr
    unpacked = json.loads(result.stdout)
    assert unpacked["activate_script"] == str(tmp_path / "env" / "activate.sh")
    assert unpacked["digest"] == packed["digest"]
    assert _run_in(tmp_path / "env", "greet-extra").returncode == 0


# -- failure paths -------------------------------------------------------------------------------


def _corrupt_member(pack: Path, dest: Path) -> Path:
    """Flip one byte inside the first conda archive of an uncompressed pack."""
    data = bytearray(pack.read_bytes())
    with tarfile.open(pack) as tar:
        member = next(m for m in tar.getmembers() if m.name.startswith("conda/"))
    data[member.offset_data + member.size // 2] ^= 0xFF
    dest.write_bytes(bytes(data))
    return dest


def test_corrupt_pack_installs_nothing(linux64_pack: Path, tmp_path: Path, cli) -> None:
    bad = _corrupt_member(linux64_pack, tmp_path / "bad.tar")
    result = cli("unpack", bad, tmp_path / "env")
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    # archives are checked as they are installed, so progress may come first; the error is one line
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert "is corrupt (sha256 mismatch)" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar"]


@pytest.mark.parametrize("where", ["metadata", "middle", "last-byte"])
def test_truncated_pack_installs_nothing(linux64_pack: Path, tmp_path: Path, where: str) -> None:
    with tarfile.open(linux64_pack) as tar:
        members = tar.getmembers()
    cut = {
        "metadata": members[0].offset_data + 10,
        "middle": members[len(members) // 2].offset_data + members[len(members) // 2].size // 2,
        "last-byte": members[-1].offset_data + members[-1].size - 1,
    }[where]
    short = tmp_path / "short.tar"
    short.write_bytes(linux64_pack.read_bytes()[:cut])
    with pytest.raises(PackError, match="truncated|corrupt"):
        unpack(short, tmp_path / "env")
    assert not (tmp_path / "env").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.tar"]


def test_not_a_pack(tmp_path: Path, cli) -> None:
    bogus = tmp_path / "x.tar"
    with tarfile.open(bogus, "w") as tar:
        info = tarfile.TarInfo("hello.txt")
        tar.addfile(info)
    result = cli("unpack", bogus, tmp_path / "env")
    assert result.exit_code == 3 and "not a pixi-deploy pack" in result.stderr
    (tmp_path / "y.tar").write_bytes(b"garbage" * 100)
    result = cli("unpack", tmp_path / "y.tar", tmp_path / "env")
    assert result.exit_code == 3 and "pixi-deploy pack" in result.stderr
    result = cli("unpack", tmp_path / "missing.tar", tmp_path / "env")
    assert result.exit_code == 3 and "does not exist" in result.stderr


def test_existing_target_is_refused(linux64_pack: Path, tmp_path: Path) -> None:
    target = tmp_path / "env"
    target.mkdir()
    (target / "precious").write_text("keep me")
    with pytest.raises(StoreError, match="already exists and is not empty"):
        unpack(linux64_pack, target)
    assert (target / "precious").read_text() == "keep me"


def test_package_neither_cached_nor_reachable(fresh_demo_ws: Path, tmp_path: Path, cli) -> None:
    shutil.rmtree(fresh_demo_ws.parent / "channel" / "linux-64")
    result = cli(
        "pack",
        "--manifest-path",
        fresh_demo_ws,
        "-p",
        "linux-64",
        "--cache-dir",
        tmp_path / "c",
        "-o",
        tmp_path / "p.tar",
    )
    assert result.exit_code == 4
    assert "not in the download cache" in result.stderr and "is not readable" in result.stderr
    assert not (tmp_path / "p.tar").exists()
    assert not list(tmp_path.glob(".p.tar.*"))


def test_unreachable_http_channel(fresh_demo_ws: Path, tmp_path: Path) -> None:
    lock = fresh_demo_ws / "pixi.lock"
    channel = (fresh_demo_ws.parent / "channel").as_posix()
    text = lock.read_text().replace(f"file://{channel}", "http://127.0.0.1:9/channel")
    lock.write_text(text.replace(channel, "http://127.0.0.1:9/channel"))
    resolved = load_workspace(fresh_demo_ws).resolve("default", "linux-64")
    with pytest.raises(FetchError, match="unreachable"):
        write_pack(resolved, tmp_path / "p.tar", cache=DownloadCache(tmp_path / "c"))


def test_channel_serving_other_bytes_is_caught(fresh_demo_ws: Path, tmp_path: Path) -> None:
    archive = next((fresh_demo_ws.parent / "channel" / "linux-64").glob("greet-1*.conda"))
    archive.write_bytes(archive.read_bytes() + b"tampered")
    resolved = load_workspace(fresh_demo_ws).resolve("default", "linux-64")
    with pytest.raises(FetchError, match="does not match the sha256 in pixi.lock"):
        write_pack(resolved, tmp_path / "p.tar", cache=DownloadCache(tmp_path / "c"))
    assert not list((tmp_path / "c").rglob("greet-1*.conda"))


def test_corrupted_cache_entry_is_detected_and_dropped(demo_ws: Path, tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "c")
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    write_pack(resolved, tmp_path / "ok.tar", cache=cache)
    entry = next((tmp_path / "c").rglob("greet-1*.conda"))
    entry.write_bytes(b"x" * entry.stat().st_size)
    with pytest.raises(PackError, match="does not match the sha256"):
        write_pack(resolved, tmp_path / "bad.tar", cache=cache)
    assert not entry.exists() and not (tmp_path / "bad.tar").exists()
    write_pack(resolved, tmp_path / "again.tar", cache=cache)  # re-fetched, fine again
    assert (tmp_path / "again.tar").read_bytes() == (tmp_path / "ok.tar").read_bytes()


def test_target_out_of_space(linux64_pack: Path, tmpfs, cli) -> None:
    small = tmpfs("24k")
    result = cli("unpack", linux64_pack, small / "env")
    assert result.exit_code == 5
    assert "no space left" in result.stderr
    assert list(small.iterdir()) == []


def test_target_not_writable(linux64_pack: Path, tmpfs, cli) -> None:
    readonly = tmpfs("1m", readonly=True)
    result = cli("unpack", linux64_pack, readonly / "env")
    assert result.exit_code == 5
    assert "cannot write to" in result.stderr or "not writable" in result.stderr


def test_pack_output_not_writable(demo_ws: Path, cache: DownloadCache, tmpfs) -> None:
    readonly = tmpfs("1m", readonly=True)
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    with pytest.raises((PackError, StoreError), match="cannot write|Read-only"):
        write_pack(resolved, readonly / "p.tar", cache=cache)


def test_interrupted_unpack_leaves_nothing_usable(linux64_pack: Path, tmp_path: Path) -> None:
    """SIGINT/SIGTERM clean up; kill -9 at any moment of the work never leaves a half environment
    at the target, and what it leaves beside it goes with the next unpack to that target."""
    code = (
        "import sys; from pathlib import Path; from pixi_deploy.cli import main;"
        "sys.exit(main(['unpack', sys.argv[1], sys.argv[2]]))"
    )

    def beside(i: int) -> list[Path]:
        return [p for p in tmp_path.iterdir() if p.name.startswith(f".env{i}.")]

    outcomes = set()
    cleaned = 0
    for i, (sig, delay) in enumerate(
        [(signal.SIGKILL, d) for d in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)]
        + [(signal.SIGTERM, 0.02), (signal.SIGINT, 0.02)]
    ):
        target = tmp_path / f"env{i}"
        proc = subprocess.Popen([sys.executable, "-c", code, str(linux64_pack), str(target)])
        deadline = time.monotonic() + 60
        while not beside(i) and proc.poll() is None:  # the work has begun (imports take long)
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        if target.exists():
            outcomes.add("complete")
            assert (target / "activate.sh").is_file() and (target / "conda-meta").is_dir()
            assert _run_in(target, "greet").returncode == 0
        else:
            outcomes.add("absent")
        if sig != signal.SIGKILL:
            assert beside(i) == [], "SIGINT/SIGTERM must remove the work folder"
        elif beside(i) and not target.exists():
            for p in beside(i):
                age(p)  # past the grace time for a new owner
            unpack(linux64_pack, target)
            assert _run_in(target, "greet").returncode == 0
            assert beside(i) == [], "the next unpack must remove what kill -9 left"
            cleaned += 1
    assert outcomes <= {"complete", "absent"}
    assert cleaned, "no kill -9 landed while the work folder was there"
