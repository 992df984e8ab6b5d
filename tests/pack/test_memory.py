"""Unpack's memory does not grow with the package (issue 18): a 300 MB-payload package, whose
archives used to be mapped whole (the process then peaked at ~350 MB), is unpacked from a file
(plain and zstd) and from a pipe within a generous bound over what pixi-deploy needs anyway.
The exact figures are the benchmark's (benchmarks/bench_memory.py); this holds the line."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.testing.channel import lock_workspace
from pixi_deploy.testing.large import LargePackage, build_large_package, index_large_packages
from pixi_deploy.testing.memory import Peak, measure
from pixi_deploy.workspace import load_workspace

SRC = Path(__file__).resolve().parents[2] / "src"
CODE = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
PAYLOAD = 300 << 20
BOUND = 200 << 20  # over the baseline; mapping the archive alone would take PAYLOAD

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def packs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("large")
    package = LargePackage("big", PAYLOAD, file_size=128 << 20)
    build_large_package(package, root / "channel")
    index_large_packages(root / "channel", [package])
    lock_workspace(root / "ws", root / "channel", {"default": ["big"]}, ["linux-64"])
    resolved = load_workspace(root / "ws").resolve("default", "linux-64")
    cache = DownloadCache(root / "cache")
    return {
        compression: write_pack(
            resolved, root / f"env{suffix}", compression=compression, cache=cache
        ).path
        for compression, suffix in (("none", ".tar"), ("zstd", ".tar.zst"))
    }


def _run(*argv: str | Path) -> Peak:
    peak, errors = measure(argv, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert peak.returncode == 0, errors
    return peak


def _cli(*args: str | Path) -> list[str | Path]:
    return [sys.executable, "-c", CODE, *args]


@pytest.mark.parametrize("how", ["plain", "zstd", "stdin"])
def test_unpack_memory_does_not_grow_with_the_package(
    packs: dict[str, Path], tmp_path: Path, how: str
) -> None:
    baseline = _run(*_cli("pack-info", packs["none"]))  # the interpreter and every import
    target = tmp_path / "env"
    if how == "stdin":
        line = f"cat {packs['zstd']} | {sys.executable} -c '{CODE}' unpack - {target}"
        peak = _run("sh", "-c", line)
    else:
        peak = _run(*_cli("unpack", packs["none" if how == "plain" else "zstd"], target))
    assert sum(f.stat().st_size for f in target.rglob("*.so")) == PAYLOAD
    limit = max(baseline.max_rss, baseline.tree_pss) + BOUND
    assert peak.max_rss < limit, (peak, baseline)  # the largest process, from the kernel
    assert peak.tree_pss < limit, (peak, baseline)  # every process together (sampled)
