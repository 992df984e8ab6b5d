"""Fixtures for Slurm tests against the real test cluster: a private base path per test, a
transport, clients with and without sacct, and the demo environment deployed there."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import connections
from helpers.multinode import multi_node_cluster  # noqa: F401 - a fixture
from pixi_deploy.pack import DownloadCache
from pixi_deploy.slurm import SlurmClient
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace


@pytest.fixture
def settings(ssh_settings) -> SSHSettings:
    return ssh_settings


@pytest.fixture
def base(test_cluster) -> str:
    return f"{test_cluster.base_path}/slurm-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def transport(settings: SSHSettings) -> Iterator[Transport]:
    with Transport(settings) as t:
        yield t


@pytest.fixture
def client(transport: Transport, base: str) -> SlurmClient:
    return SlurmClient(transport, base, poll_interval=0.25)


@pytest.fixture(params=[True, False], ids=["sacct", "scontrol"])
def any_client(request: pytest.FixtureRequest, transport: Transport, base: str) -> SlurmClient:
    """The same tests with accounting (sacct) and without (scontrol + jobcomp)."""
    return SlurmClient(transport, base, use_sacct=request.param, poll_interval=0.25)


@pytest.fixture
def demo_env(transport: Transport, base: str, demo_ws: Path, tmp_path: Path) -> str:
    """The demo environment (has `greet`) deployed under this test's base; its path."""
    store = RemoteStore(transport, base)
    metadata = store.deploy(load_workspace(demo_ws), cache=DownloadCache(tmp_path / "cache"))
    return metadata.deployment_path


@pytest.fixture
def drop_connection():
    """Function that kills the sshd processes of one transport's connection."""
    return _drop_connection


def _drop_connection(transport: Transport) -> list[int]:
    """Kill (SIGKILL) the sshd processes serving exactly this transport's connection, as a
    network failure would end it; other users of the shared test sshd are not touched."""
    pids = connections.drop_connection(transport)
    time.sleep(0.2)  # let the client notice (no assertion waits on this)
    return pids
