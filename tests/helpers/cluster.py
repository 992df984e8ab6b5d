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


def partition_with_nodes(client: Any, count: int) -> str | None:
    """A partition with at least ``count`` nodes that can run jobs now (Slurm does not start a
    heterogeneous job whose components would have to share one node)."""
    out = client.transport.run(["sinfo", "-h", "-N", "-o", "%P|%t"]).stdout
    usable: dict[str, int] = {}
    for line in out.splitlines():
        partition, _, state = line.strip().partition("|")
        if state.rstrip("*~#") in ("idle", "mix", "alloc", "comp"):
            name = partition.rstrip("*")
            usable[name] = usable.get(name, 0) + 1
    return next((p for p, n in usable.items() if n >= count), None)
