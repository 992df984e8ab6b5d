"""Fixtures shared across rooms: the demo workspace (real packages, real pixi.lock), a download
cache, real tmpfs mounts for full-disk and read-only targets, and running the CLI in-process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pixi_deploy.cli import main
from pixi_deploy.pack import DownloadCache
from pixi_deploy.testing.channel import make_demo_workspace

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCKS = REPO_ROOT / "tests" / "data" / "locks"


@pytest.fixture(scope="session")
def demo_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo workspace (environments default + extra, linux-64 + linux-aarch64). Read-only use."""
    return make_demo_workspace(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def fresh_demo_ws(tmp_path: Path) -> Path:
    """A private demo workspace a test may change (its channel too)."""
    return make_demo_workspace(tmp_path / "demo")


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> DownloadCache:
    return DownloadCache(tmp_path_factory.mktemp("cache"))


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run `pixi-deploy ARGS...` in-process, returning exit code and captured output."""

    def invoke(*args: str | Path) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return invoke


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount a real tmpfs (root only, as in CI): a small one for 'disk full', 'ro' for read-only."""
    mounted: list[Path] = []

    def mount(size: str = "1m", readonly: bool = False) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if readonly else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)
