"""The multi-node test cluster: ``scripts/test-cluster start --nodes 3`` on top of the shared
cluster, as a session fixture, and crashing/reviving a node for fault tests.

The namespaced nodes sit in their own partition, so the single-node tests of other sessions
never land on them. A fixture import in a conftest.py makes ``multi_node_cluster`` available:
``from helpers.multinode import multi_node_cluster  # noqa: F401``.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

NODES = 3
# Adding nodes to a controller started by an older test-cluster restarts it, which waits for
# other pytest sessions to end first: allow for a long wait rather than fail.
START_TIMEOUT = 3900


@dataclass(frozen=True)
class MultiNode:
    """The shared cluster's settings plus its namespaced nodes."""

    cluster: Any  # conftest.ClusterSettings
    partition: str
    nodes: tuple[str, ...]
    script: Any  # conftest.ClusterScript

    def kill_node(self, name: str) -> None:
        """Crash ``name``: every process in its namespace is SIGKILLed and Slurm marks it
        DOWN (as a health check would; slurmctld alone notices only after SlurmdTimeout)."""
        proc = self.script.run("kill-node", name, timeout=120)
        assert proc.returncode == 0, proc.stderr

    def processes(self, pattern: str) -> list[str]:
        """``node: pid command line`` of every process inside the nodes' namespaces whose
        command line matches ``pattern`` (localhost, where other sessions run, is not
        looked at)."""
        found = []
        for node in self.nodes:
            out = subprocess.run(
                ["ip", "netns", "pids", f"pixi-deploy-{node}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            for pid in out.split():
                try:
                    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                args = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                if re.search(pattern, args):
                    found.append(f"{node}: {pid} {args}")
        return found

    def revive(self) -> None:
        """Bring every node back (restarts the slurmd of a crashed one; waits until idle)."""
        proc = self.script.run("start", "--nodes", str(NODES), timeout=START_TIMEOUT)
        assert proc.returncode == 0, proc.stderr


def start_nodes(cluster: Any, script: Any) -> MultiNode:
    proc = script.run("start", "--nodes", str(NODES), timeout=START_TIMEOUT)
    if proc.returncode != 0:
        pytest.fail(
            f"scripts/test-cluster start --nodes {NODES} failed (exit {proc.returncode}):\n"
            f"{proc.stderr.strip()}",
            pytrace=False,
        )
    values = script.parse_exports(proc.stdout)
    nodes = tuple(n for n in values["PIXI_DEPLOY_TEST_NODES"].split(",") if n)
    assert len(nodes) >= NODES, proc.stderr
    return MultiNode(cluster, values["PIXI_DEPLOY_TEST_MULTI_PARTITION"], nodes, script)


@pytest.fixture(scope="session")
def multi_node_cluster(test_cluster: Any, cluster_script: Any) -> MultiNode:
    """The test cluster with nodes node1..node3 (partition ``multi``) running."""
    return start_nodes(test_cluster, cluster_script)
