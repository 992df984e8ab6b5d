"""Fixtures for the project on the real test cluster: a small project with activation and
tasks, copied per test, run from its folder with a private base path and cache."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from helpers.project import ACTIVATION, SETUP, make_project, run_git
from pixi_deploy.transport import Transport


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cluster-project")
    workspace = make_project(root, ACTIVATION, git=False)
    (workspace / "scripts").mkdir()
    (workspace / "scripts" / "setup.sh").write_text(SETUP)
    run_git(workspace, "init", "-q")
    run_git(workspace, "add", "-A")
    run_git(workspace, "commit", "-q", "-m", "first")
    return workspace


@pytest.fixture
def project(template: Path, tmp_path: Path, ssh_env, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the project, the current folder, with a private base and cache."""
    workspace = tmp_path / "project"
    shutil.copytree(template, workspace, symlinks=True)
    monkeypatch.setenv(
        "SLURM_DEPLOYMENT_BASE_PATH", f"{ssh_env.base_path}/code-{uuid.uuid4().hex[:8]}"
    )
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(workspace)
    return workspace


@pytest.fixture
def remote(ssh_settings, project: Path) -> Iterator[Transport]:
    """A connection whose base path is this test's own (as the API's default one has)."""
    with Transport(replace(ssh_settings, base_path=_base())) as t:
        yield t


def _base() -> str:
    return os.environ["SLURM_DEPLOYMENT_BASE_PATH"]
