"""Shared pytest setup: the real test cluster fixture and the ``cluster`` marker.

The cluster (sshd on 127.0.0.1:2222 + single-node Slurm) is started by ``scripts/test-cluster``
the first time a test asks for the ``test_cluster`` fixture, and stopped at the end of the
session only if this session started it. If it cannot start, the tests that need it fail with
the script's error; nothing is skipped.

Environment knobs:
- ``PIXI_DEPLOY_TEST_ACCOUNTING``: "1" (default) starts with ``--accounting`` (mariadb +
  slurmdbd, so ``sacct`` works), "0" without. A cluster that is already running is used as is.
- ``PIXI_DEPLOY_TEST_CLUSTER_DIR``: state directory (default /tmp/pixi-deploy-test-cluster).

``PIXI_DEPLOY_WRITERS`` is 2 for the whole session (unless set): the test environments are
all small, which unpack writes in its own process by default, so without it the forked payload
writers (and what interrupts and kills do to them) would go untested. tests/pack/test_direct.py
unsets it to test the small-environment default.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

os.environ.setdefault("PIXI_DEPLOY_WRITERS", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "test-cluster"


@dataclass(frozen=True)
class ClusterSettings:
    """How to reach the test cluster's login node and what it offers."""

    host: str
    port: int
    user: str
    key_path: Path
    password: str = field(repr=False)
    known_hosts: Path
    base_path: str
    state_dir: Path
    sacct: bool
    sshd_pid_file: Path
    # "cgroup": a job over its --mem ends OUT_OF_MEMORY; "overmemorykill": it ends FAILED
    memory_enforcement: str


class ClusterScript:
    """scripts/test-cluster, and parsing of what it prints (also a fixture: ``cluster_script``).

    Tests get it from the fixture instead of importing conftest, which other conftest.py files
    in subdirectories would shadow.
    """

    path = CLUSTER_SCRIPT

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run the script with ARGS, capturing its output (never raises on the exit code)."""
        return subprocess.run(
            [str(self.path), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @staticmethod
    def parse_exports(text: str) -> dict[str, str]:
        """Parse the ``export NAME=value`` lines (shell-quoted) that the script prints."""
        values: dict[str, str] = {}
        for line in text.splitlines():
            words = shlex.split(line)
            if len(words) == 2 and words[0] == "export" and "=" in words[1]:
                name, value = words[1].split("=", 1)
                values[name] = value
        return values

    def settings(self, stdout: str) -> ClusterSettings:
        """The ClusterSettings described by the script's ``export`` lines."""
        values = self.parse_exports(stdout)
        password_file = Path(values["PIXI_DEPLOY_TEST_PASSWORD_FILE"])
        return ClusterSettings(
            host=values["SLURM_EDGE_NODE_HOST"],
            port=int(values["SLURM_EDGE_NODE_PORT"]),
            user=values["SLURM_EDGE_NODE_USER"],
            key_path=Path(values["SLURM_EDGE_NODE_KEY_PATH"]),
            password=password_file.read_text().strip(),
            known_hosts=Path(values["SLURM_EDGE_NODE_KNOWN_HOSTS"]),
            base_path=values["SLURM_DEPLOYMENT_BASE_PATH"],
            state_dir=Path(values["PIXI_DEPLOY_TEST_CLUSTER_DIR"]),
            sacct=values["PIXI_DEPLOY_TEST_SACCT"] == "1",
            sshd_pid_file=Path(values["PIXI_DEPLOY_TEST_SSHD_PID_FILE"]),
            memory_enforcement=values.get("PIXI_DEPLOY_TEST_MEMORY_ENFORCEMENT", "cgroup"),
        )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: needs the real sshd + Slurm test cluster (scripts/test-cluster)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # every test that uses the cluster carries the marker, so `-m "not cluster"` deselects it
    for item in items:
        if "test_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def cluster_script() -> ClusterScript:
    """Runs scripts/test-cluster and parses its output."""
    return ClusterScript()


@pytest.fixture(scope="session")
def test_cluster(cluster_script: ClusterScript) -> Iterator[ClusterSettings]:
    """Start the test cluster once per session (if not running) and yield its settings."""
    # Several pytest sessions on one machine share the cluster: each registers itself, and
    # the last one to leave stops the cluster if a pytest session started it (a cluster that
    # was running before, e.g. started by .ci/run or by hand, is left running).
    sessions = _state_dir() / "pytest-sessions"
    sessions.mkdir(parents=True, exist_ok=True)
    me = sessions / str(os.getpid())
    started_by_pytest = sessions / "started-by-pytest"
    with _locked(sessions):
        running = cluster_script.run("status", timeout=60).returncode == 0
        args = ["start"]
        if not running and os.environ.get("PIXI_DEPLOY_TEST_ACCOUNTING", "1") != "0":
            args.append("--accounting")
        proc = cluster_script.run(*args)
        if proc.returncode != 0:
            pytest.fail(
                f"scripts/test-cluster {' '.join(args)} failed (exit {proc.returncode}):\n"
                f"{proc.stderr.strip()}",
                pytrace=False,
            )
        if not running:
            started_by_pytest.touch()
        me.touch()
    try:
        yield cluster_script.settings(proc.stdout)
    finally:
        with _locked(sessions):
            me.unlink(missing_ok=True)
            others = [p for p in sessions.iterdir() if p.name.isdigit() and _pid_alive(p.name)]
            if not others and started_by_pytest.exists():
                stop = cluster_script.run("stop", timeout=120)
                if stop.returncode != 0:
                    print(f"scripts/test-cluster stop failed:\n{stop.stderr}")
                started_by_pytest.unlink(missing_ok=True)


def _state_dir() -> Path:
    raw = os.environ.get("PIXI_DEPLOY_TEST_CLUSTER_DIR") or "/tmp/pixi-deploy-test-cluster"
    return Path(raw).absolute()


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with open(directory / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _pid_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def image_tools(cluster_script: ClusterScript) -> None:
    """squashfs-tools, squashfuse and fuse3 installed (apt-get, on demand) and /dev/fuse usable
    by the test user: what --format squashfs needs here and on the test cluster's nodes."""
    done = cluster_script.run("image-tools")
    assert done.returncode == 0, done.stderr


@pytest.fixture
def ssh_env(test_cluster: ClusterSettings, monkeypatch: pytest.MonkeyPatch) -> ClusterSettings:
    """Point the SLURM_EDGE_NODE_* settings at the test cluster (key authentication)."""
    c = test_cluster
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", c.host)
    monkeypatch.setenv("SLURM_EDGE_NODE_PORT", str(c.port))
    monkeypatch.setenv("SLURM_EDGE_NODE_USER", c.user)
    monkeypatch.setenv("SLURM_EDGE_NODE_KEY_PATH", str(c.key_path))
    monkeypatch.setenv("SLURM_EDGE_NODE_KNOWN_HOSTS", str(c.known_hosts))
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", c.base_path)
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    return c


@pytest.fixture
def ssh_settings(test_cluster: ClusterSettings):  # type: ignore[no-untyped-def]
    """SSHSettings for the test cluster: key auth, its known_hosts, no ~/.ssh/config."""
    from helpers.cluster import ssh_settings_for

    return ssh_settings_for(test_cluster)
