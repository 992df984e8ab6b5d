"""SSH settings for the test cluster, usable from fixtures of any scope."""

from __future__ import annotations

from typing import Any

from pixi_deploy.transport import SSHSettings


def ssh_settings_for(cluster: Any) -> SSHSettings:
    """Key auth, the cluster's known_hosts and base path, and no ~/.ssh/config."""
    return SSHSettings(
        host=cluster.host,
        port=cluster.port,
        user=cluster.user,
        key_path=cluster.key_path,
        known_hosts=cluster.known_hosts,
        base_path=cluster.base_path,
        ssh_config=None,
    )
