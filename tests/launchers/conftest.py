"""Fixtures for the launcher tests: Ray from PyPI deployed on the test cluster once per
session, and the multi-node cluster (``helpers.multinode``)."""

from __future__ import annotations

import uuid

import pytest

from helpers.cluster import ssh_settings_for
from helpers.multinode import multi_node_cluster  # noqa: F401 - a fixture
from pixi_deploy.pack import DownloadCache
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

from .ray_workspace import WHEELS, make_ray_workspace


@pytest.fixture(scope="session")
def ray_env(test_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[SSHSettings, str]:
    """SSH settings and the path of an environment with python + ray on the cluster."""
    c = test_cluster
    settings = ssh_settings_for(c)
    base = f"{c.base_path}/ray-{uuid.uuid4().hex[:8]}"
    workspace = make_ray_workspace(tmp_path_factory.mktemp("ray"))
    with Transport(settings) as transport:
        metadata = RemoteStore(transport, base).deploy(
            load_workspace(workspace), cache=DownloadCache(WHEELS / "cache")
        )
    return settings, metadata.deployment_path
