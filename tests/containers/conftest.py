"""Fixtures of the container tests: writable copies of the lock fixtures in tests/data/locks."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pixi_deploy.workspace import Workspace, load_workspace

LOCKS = Path(__file__).resolve().parent.parent / "data" / "locks"
SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "schemas"


@pytest.fixture
def make_workspace(tmp_path: Path) -> Callable[..., Workspace]:
    """Copy a fixture workspace (tests/data/locks/<name>) into tmp_path, optionally with src/."""

    def make(name: str, src: bool = False) -> Workspace:
        target = tmp_path / name
        shutil.copytree(LOCKS / name, target)
        if src:
            (target / "src" / "app").mkdir(parents=True)
            (target / "src" / "app" / "__init__.py").write_text("")
        return load_workspace(target)

    return make


@pytest.fixture
def simple(make_workspace: Callable[..., Workspace]) -> Workspace:
    """pixi.toml, default env locked for linux-64 + linux-aarch64 (+ others), no CUDA."""
    return make_workspace("pixi-pack-simple-python-v6", src=True)


@pytest.fixture
def gpu(make_workspace: Callable[..., Workspace]) -> Workspace:
    """pixi.toml with [system-requirements] cuda = 12.0; linux-64 only."""
    return make_workspace("pytorch-gpu-example-v6")


@pytest.fixture
def pyproject(make_workspace: Callable[..., Workspace]) -> Workspace:
    """pyproject.toml manifest with several environments."""
    return make_workspace("dagster-slurm-examples-v6")


# Real registries, a busybox base image and tools for `pixi-deploy image` (tests/containers/test_image.py).
from containers.registry_fixture import auth_registry, busybox_base, registry  # noqa: E402, F401
