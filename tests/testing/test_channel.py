"""The offline package/channel/lock builder: real archives, real solves, real installs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import tomllib
import zipfile
import zlib
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
import rattler
import rattler.package_streaming

from pixi_deploy.testing import (
    BINARY_PLACEHOLDER,
    TEXT_PLACEHOLDER,
    GeneratedBytes,
    PackageSpec,
    build_channel,
    build_package,
    channel_url,
    demo_specs,
    lock_workspace,
    make_demo_workspace,
    synthetic_specs,
    with_bumped,
)

PLATFORMS = ("linux-64", "linux-aarch64")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _spec(name: str, specs: list[PackageSpec], subdir: str = "linux-64") -> PackageSpec:
    return next(s for s in specs if s.name == name and s.subdir in (subdir, "noarch"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workspace, built once for the module (building it takes well under a second)."""
    return make_demo_workspace(tmp_path_factory.mktemp("demo"))


def _records(workspace: Path, env_name: str, platform: str) -> list[rattler.RepoDataRecord]:
    lock = rattler.LockFile.from_path(workspace / "pixi.lock")
    lock_platform = next(p for p in lock.platforms() if p.name == platform)
    env = lock.environment(env_name)
    assert env is not None
    return env.conda_repodata_records_for_platform(lock_platform) or []


def _install(records: list[rattler.RepoDataRecord], stage: Path, target: Path, platform: str):
    asyncio.run(
        rattler.install(
            records,
            stage,
            cache_dir=stage.parent / f"cache-{platform}",
            platform=rattler.Subdir(platform),
            alternative_target_prefix=target,
            show_progress=False,
        )
    )


# ---- single packages -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["greet", "libgreet"])  # .conda and .tar.bz2
def test_package_is_read_by_rattler(tmp_path: Path, name: str) -> None:
    spec = _spec(name, demo_specs())
    archive = build_package(spec, tmp_path)
    record = asyncio.run(rattler.RepoDataRecord.from_package_archive(archive))
    assert (record.name.normalized, str(record.version), str(record.build)) == (
        name,
        spec.version,
        spec.build,
    )
    assert record.sha256 is not None and record.sha256.hex() == _sha256(archive)
    assert [str(d) for d in record.depends] == spec.depends

    rattler.package_streaming.extract(archive, tmp_path / "x")
    for path, content in spec.payload().items():
        data = content.encode() if isinstance(content, str) else content
        assert (tmp_path / "x" / path).read_bytes() == data
    index = json.loads((tmp_path / "x/info/index.json").read_text())
    assert index["subdir"] == "linux-64" and index["arch"] == "x86_64"


def test_paths_json_records_placeholders(tmp_path: Path) -> None:
    specs = demo_specs()
    modes = {}
    for name in ("greet", "libgreet", "greet-config"):
        paths = rattler.PathsJson.from_package_archive(build_package(_spec(name, specs), tmp_path))
        for entry in paths.paths:
            placeholder = entry.prefix_placeholder
            modes[str(entry.relative_path)] = placeholder and (
                placeholder.file_mode.mode,
                placeholder.placeholder,
            )
    assert modes["bin/greet"] == ("text", TEXT_PLACEHOLDER)
    assert modes["lib/libgreet.so"] == ("binary", BINARY_PLACEHOLDER)
    assert modes["share/libgreet/README"] is None
    assert "etc/conda/activate.d/greet-config.sh" in modes
    assert len(BINARY_PLACEHOLDER) >= 200


def test_conda_archive_layout(tmp_path: Path) -> None:
    archive = build_package(_spec("greet", demo_specs()), tmp_path)
    with zipfile.ZipFile(archive) as zf:
        names = sorted(zf.namelist())
        assert names == [
            "info-greet-1.0.0-h0_0.tar.zst",
            "metadata.json",
            "pkg-greet-1.0.0-h0_0.tar.zst",
        ]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert json.loads(zf.read("metadata.json")) == {"conda_pkg_format_version": 2}


def test_builds_are_reproducible(tmp_path: Path) -> None:
    specs = demo_specs(("linux-64",)) + synthetic_specs(4, 300_000, seed=3)
    first = {s.filename: _sha256(build_package(s, tmp_path / "a")) for s in specs}
    second = {s.filename: _sha256(build_package(s, tmp_path / "b")) for s in specs}
    assert first == second


def test_spec_without_its_placeholder_is_refused(tmp_path: Path) -> None:
    spec = PackageSpec(
        "bad", "1", files={"bin/x": "no placeholder"}, prefix_files={"bin/x": "text"}
    )
    with pytest.raises(ValueError, match="placeholder"):
        build_package(spec, tmp_path)


# ---- channel and lock -----------------------------------------------------------------------


def test_manifest_describes_environments(demo: Path) -> None:
    manifest = tomllib.loads((demo / "pixi.toml").read_text())
    assert manifest["workspace"]["channels"] == [channel_url(demo.parent / "channel")]
    assert manifest["workspace"]["platforms"] == list(PLATFORMS)
    assert set(manifest["dependencies"]) == {"greet", "greet-config", "greet-data"}
    assert manifest["feature"]["extra"]["dependencies"] == {"greet-extra": "*"}
    assert manifest["environments"] == {"extra": ["extra"]}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_lock_reads_back_for_each_environment(demo: Path, platform: str) -> None:
    default = {"greet", "greet-config", "greet-data", "libgreet"}
    for env_name, expected in (("default", default), ("extra", default | {"greet-extra"})):
        records = _records(demo, env_name, platform)
        assert {r.name.normalized for r in records} == expected
        for record in records:
            assert record.subdir in (platform, "noarch")
            assert record.url.startswith("file:///")
            archive = Path(url2pathname(urlparse(record.url).path))
            assert record.sha256 is not None and record.sha256.hex() == _sha256(archive)


def test_lock_and_channel_are_reproducible(tmp_path: Path) -> None:
    locks = [
        (make_demo_workspace(tmp_path / d) / "pixi.lock").read_text().replace(d, "X")
        for d in ("one", "two")
    ]
    assert locks[0] == locks[1]


def test_bumped_package_changes_only_itself(tmp_path: Path) -> None:
    specs = demo_specs(("linux-64",))
    bumped = with_bumped(specs, "greet")
    assert _spec("greet", bumped).version == "1.0.1"
    envs = {"default": ["greet"]}
    before = lock_workspace(
        tmp_path / "w1", build_channel(tmp_path / "c1", specs), envs, ["linux-64"]
    )
    after = lock_workspace(
        tmp_path / "w2", build_channel(tmp_path / "c2", bumped), envs, ["linux-64"]
    )
    old = {r.name.normalized: r for r in _records(before.parent, "default", "linux-64")}
    new = {r.name.normalized: r for r in _records(after.parent, "default", "linux-64")}
    assert str(new["greet"].version) == "1.0.1" and new["greet"].sha256 != old["greet"].sha256
    assert new["libgreet"].sha256 == old["libgreet"].sha256


# ---- real installs --------------------------------------------------------------------------


def test_install_linux_64_runs_at_target_prefix(demo: Path, tmp_path: Path) -> None:
    """Lay out for a path the files are not at yet, move them there, and run: what a deploy does."""
    stage, target = tmp_path / "stage", tmp_path / "deployed" / "env"
    _install(_records(demo, "default", "linux-64"), stage, target, "linux-64")
    target.parent.mkdir()
    shutil.move(stage, target)

    activate = target / "etc/conda/activate.d/greet-config.sh"
    script = f'. "{activate}" && "{target}/bin/greet"'
    env = {"PATH": os.environ["PATH"], "CONDA_PREFIX": str(target)}
    out = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == [
        f"hello from greet 1.0.0 at {target}",
        "libgreet says hello",
        f"config: {target}/etc/greet.conf",
    ]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_install_patches_placeholders(demo: Path, tmp_path: Path, platform: str) -> None:
    target = "/cluster/home/alice/.pixi-deploy/envs/0123456789abcdef"
    stage = tmp_path / "stage"
    _install(_records(demo, "extra", platform), stage, Path(target), platform)

    so = (stage / "lib/libgreet.so").read_bytes()
    original = build_package(_spec("libgreet", demo_specs(), platform), tmp_path / "pkg")
    rattler.package_streaming.extract(original, tmp_path / "orig")
    assert len(so) == (tmp_path / "orig/lib/libgreet.so").stat().st_size
    assert BINARY_PLACEHOLDER.encode() not in so
    padded = f"{target}/share/libgreet/README".encode() + b"\0" * (
        len(BINARY_PLACEHOLDER) - len(target)
    )
    assert padded in so

    greet = stage / "bin/greet"
    assert f'prefix="{target}"' in greet.read_text() and os.access(greet, os.X_OK)
    assert TEXT_PLACEHOLDER not in (stage / "bin/greet-extra").read_text()
    assert (stage / "etc/conda/activate.d/greet-config.sh").is_file()
    assert (stage / "share/greet-data/greetings.txt").is_file()  # the noarch package


# ---- synthetic benchmark sets ---------------------------------------------------------------


def test_synthetic_specs_shape() -> None:
    specs = synthetic_specs(n_packages=40, total_bytes=4_000_000, seed=7)
    assert specs == synthetic_specs(n_packages=40, total_bytes=4_000_000, seed=7)
    assert specs != synthetic_specs(n_packages=40, total_bytes=4_000_000, seed=8)
    sizes = sorted(
        sum(f.size for f in s.files.values() if isinstance(f, GeneratedBytes)) for s in specs
    )
    assert abs(sum(sizes) - 4_000_000) < 40 * 64
    assert sizes[-1] > 10 * sizes[len(sizes) // 2]  # skewed: a few large, many small
    index = {s.name: i for i, s in enumerate(specs)}
    assert all(index[d] < index[s.name] for s in specs for d in s.depends)  # a DAG
    assert any(s.prefix_files for s in specs)


def test_synthetic_content_compresses_like_real_packages() -> None:
    data = GeneratedBytes(seed=1, size=2_000_000).render()
    assert len(data) == 2_000_000 and data == GeneratedBytes(seed=1, size=2_000_000).render()
    ratio = len(data) / len(zlib.compress(data, 6))
    assert 1.5 < ratio < 6


def test_synthetic_channel_solves(tmp_path: Path) -> None:
    specs = synthetic_specs(n_packages=25, total_bytes=500_000, seed=1)
    channel = build_channel(tmp_path / "channel", specs)
    assert (channel / "noarch/repodata.json").is_file()
    lock = lock_workspace(tmp_path / "ws", channel, {"default": [specs[-1].name]}, ["linux-64"])
    names = {r.name.normalized for r in _records(lock.parent, "default", "linux-64")}
    assert specs[-1].name in names and all(d in names for d in specs[-1].depends)
