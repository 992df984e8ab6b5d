"""Fixtures for the Dagster tests on the real test cluster.

The deployed environment must be able to ``import dagster_pipes``. Real CPython packages cannot
be downloaded in tests, so the environment holds two small real conda packages built here:

- ``python``: pixi_deploy.testing.python_pkg's wrapper around ``/usr/bin/python3`` (Debian's
  interpreter, which the cluster user can run; this process's interpreter lives under /root);
- ``dagster-pipes``: this machine's installed, pure-Python ``dagster_pipes`` module, packaged
  into the environment's ``lib/python3.X/site-packages``.

So ``dagster_pipes`` is imported from the deployed environment itself, not from a system
site-packages, as it would be with a real ``dagster-pipes`` package from conda-forge.
"""

from __future__ import annotations

import importlib.metadata
import uuid
from pathlib import Path

import dagster_pipes
import pytest

from helpers.cluster import ssh_settings_for
from helpers.wheels import DEBIAN_PYTHON, python_version
from pixi_deploy.dagster import SlurmQueueConfig, SlurmResource, SSHConnectionResource
from pixi_deploy.testing.channel import PackageSpec, build_channel, lock_workspace
from pixi_deploy.testing.python_pkg import python_wrapper_spec
from pixi_deploy.transport import Transport

REMOTE_PYTHON = DEBIAN_PYTHON


def dagster_pipes_spec(version: str) -> PackageSpec:
    """A noarch-free conda package holding this machine's dagster_pipes module."""
    source = Path(dagster_pipes.__file__).parent
    site = f"lib/python{version}/site-packages/dagster_pipes"
    files: dict[str, str | bytes] = {
        f"{site}/{p.relative_to(source)}": p.read_bytes()
        for p in sorted(source.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }
    return PackageSpec(
        name="dagster-pipes",
        version=importlib.metadata.version("dagster-pipes"),
        depends=["python"],
        subdir="linux-64",
        files=files,
    )


@pytest.fixture(scope="session")
def pipes_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A locked pixi workspace (linux-64) whose environment has python + dagster-pipes."""
    root = tmp_path_factory.mktemp("dagster-ws")
    version = python_version(REMOTE_PYTHON)
    specs = [
        python_wrapper_spec("linux-64", version, interpreter=REMOTE_PYTHON),
        dagster_pipes_spec(version),
    ]
    channel = build_channel(root / "channel", specs)
    workspace = root / "workspace"
    lock_workspace(
        workspace, channel, {"default": ["python", "dagster-pipes"]}, ["linux-64"], name="pipes"
    )
    return workspace


def make_slurm_resource(cluster, base: str) -> SlurmResource:
    return SlurmResource(
        ssh=SSHConnectionResource(
            host=cluster.host,
            port=cluster.port,
            user=cluster.user,
            key_path=str(cluster.key_path),
            known_hosts=str(cluster.known_hosts),
        ),
        queue=SlurmQueueConfig(time_limit="00:10:00", cpus=1),
        remote_base=base,
    )


@pytest.fixture
def slurm_for(test_cluster):
    """``slurm_for(base)``: a SlurmResource for the test cluster with that remote base."""
    return lambda base: make_slurm_resource(test_cluster, base)


@pytest.fixture
def fresh_base(test_cluster) -> str:
    """A base path nobody has deployed into (under the shared test base)."""
    return f"{test_cluster.base_path}/dagster-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def shared_base(test_cluster) -> str:
    """One base for this session's cluster tests, so the environment is deployed once."""
    return f"{test_cluster.base_path}/dagster-s-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def cluster_transport(test_cluster):
    with Transport(ssh_settings_for(test_cluster)) as transport:
        yield transport
