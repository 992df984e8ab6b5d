"""Real checks of scripts/test-cluster: SSH (key + password), sbatch, srun, sacct, the
namespaced nodes (start --nodes), stop/start.

Everything goes through the running cluster; the stop/start test is last and leaves the
cluster running for the rest of the session (with its nodes, if it had them).
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest

from helpers.multinode import MultiNode, start_nodes
from helpers.processes import alive

if TYPE_CHECKING:  # fixtures give the objects at run time; never import conftest
    from conftest import ClusterScript, ClusterSettings

pytestmark = pytest.mark.cluster

TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _connect(c: ClusterSettings, **auth: Any) -> Any:
    options: dict[str, Any] = {"client_keys": [str(c.key_path)], "agent_path": None}
    options.update(auth)
    return asyncssh.connect(
        c.host, port=c.port, username=c.user, known_hosts=str(c.known_hosts), **options
    )


def ssh_run(c: ClusterSettings, command: str, check: bool = True) -> asyncssh.SSHCompletedProcess:
    async def go() -> asyncssh.SSHCompletedProcess:
        async with _connect(c) as conn:
            return await conn.run(command, check=check)

    return asyncio.run(go())


def job_state(c: ClusterSettings, job_id: str, timeout: float = 900) -> dict[str, str]:
    """Poll `scontrol show job -o` over one SSH connection until the job has ended (other
    sessions' jobs may hold the one localhost node for minutes: a generous deadline)."""

    async def go() -> dict[str, str]:
        async with _connect(c) as conn:
            deadline = time.monotonic() + timeout
            while True:
                res = await conn.run(f"scontrol show job -o {job_id}", check=True)
                fields = dict(re.findall(r"(\w+)=(\S*)", str(res.stdout)))
                if fields.get("JobState") in TERMINAL:
                    return fields
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job_id} still {fields.get('JobState')}")
                await asyncio.sleep(0.2)

    return asyncio.run(go())


def sbatch(c: ClusterSettings, *args: str, wrap: str) -> str:
    cmd = shlex.join(["sbatch", "--parsable", f"--chdir={c.base_path}", *args, "--wrap", wrap])
    return str(ssh_run(c, cmd).stdout).strip().split(";")[0]


def test_env_prints_all_settings(
    test_cluster: ClusterSettings, cluster_script: ClusterScript
) -> None:
    proc = cluster_script.run("env")
    assert proc.returncode == 0, proc.stderr
    values = cluster_script.parse_exports(proc.stdout)
    assert set(values) >= {
        "SLURM_EDGE_NODE_HOST",
        "SLURM_EDGE_NODE_PORT",
        "SLURM_EDGE_NODE_USER",
        "SLURM_EDGE_NODE_KEY_PATH",
        "PIXI_DEPLOY_TEST_PASSWORD_FILE",
        "SLURM_EDGE_NODE_KNOWN_HOSTS",
        "SLURM_DEPLOYMENT_BASE_PATH",
        "PIXI_DEPLOY_TEST_CLUSTER_DIR",
        "PIXI_DEPLOY_TEST_SSHD_PID_FILE",
        "PIXI_DEPLOY_TEST_SACCT",
    }
    assert cluster_script.settings(proc.stdout) == test_cluster
    # the password itself is never printed, and its file is private
    assert test_cluster.password not in proc.stdout
    assert Path(values["PIXI_DEPLOY_TEST_PASSWORD_FILE"]).stat().st_mode & 0o077 == 0
    line = test_cluster.known_hosts.read_text().strip()
    assert re.fullmatch(r"\[127\.0\.0\.1\]:2222 ssh-ed25519 AAAA\S+", line)


def test_start_when_running_is_a_noop(
    test_cluster: ClusterSettings, cluster_script: ClusterScript
) -> None:
    pid_before = test_cluster.sshd_pid_file.read_text()
    proc = cluster_script.run("start")
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stderr
    assert cluster_script.settings(proc.stdout) == test_cluster
    assert test_cluster.sshd_pid_file.read_text() == pid_before
    assert cluster_script.run("status").returncode == 0


def test_ssh_by_key(test_cluster: ClusterSettings) -> None:
    res = ssh_run(
        test_cluster,
        'id -un; test -w "$SLURM_BASE" && echo writable'.replace(
            "$SLURM_BASE", test_cluster.base_path
        ),
    )
    assert str(res.stdout).split() == [test_cluster.user, "writable"]


def test_password_auth(test_cluster: ClusterSettings) -> None:
    c = test_cluster

    async def go(password: str) -> str:
        async with _connect(
            c, client_keys=None, password=password, preferred_auth="password"
        ) as conn:
            return str((await conn.run("id -un", check=True)).stdout).strip()

    assert asyncio.run(go(c.password)) == c.user
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(go(c.password + "-wrong"))


def test_sftp_subsystem(test_cluster: ClusterSettings) -> None:
    c = test_cluster

    async def go() -> bytes:
        async with _connect(c) as conn, conn.start_sftp_client() as sftp:
            path = f"{c.base_path}/sftp-check.txt"
            async with sftp.open(path, "wb") as f:
                await f.write(b"hello sftp\n")
            async with sftp.open(path, "rb") as f:
                data = await f.read()
            await sftp.remove(path)
            return data

    assert asyncio.run(go()) == b"hello sftp\n"


def test_sbatch_over_ssh_completes(test_cluster: ClusterSettings) -> None:
    c = test_cluster
    job_id = sbatch(c, "--output=job-%j.out", wrap='echo "hello from $SLURM_JOB_ID as $(id -un)"')
    fields = job_state(c, job_id)
    assert fields["JobState"] == "COMPLETED", fields
    assert fields["ExitCode"] == "0:0"
    out = ssh_run(c, f"cat {c.base_path}/job-{job_id}.out; rm -f {c.base_path}/job-{job_id}.out")
    assert str(out.stdout).strip() == f"hello from {job_id} as {c.user}"
    # jobcomp/filetxt keeps one line per finished job, even after MinJobAge
    jobcomp = (c.state_dir / "log" / "jobcomp.log").read_text()
    assert re.search(rf"JobId={job_id} .*JobState=COMPLETED", jobcomp)


def test_failing_job_reports_exit_code(test_cluster: ClusterSettings) -> None:
    job_id = sbatch(test_cluster, "--output=/dev/null", wrap="exit 3")
    fields = job_state(test_cluster, job_id)
    assert fields["JobState"] == "FAILED"
    assert fields["ExitCode"] == "3:0"


def test_srun(test_cluster: ClusterSettings) -> None:
    res = ssh_run(test_cluster, "srun -N1 -n1 sh -c 'echo $SLURM_JOB_ID $(id -un)'")
    job_id, user = str(res.stdout).split()
    assert job_id.isdigit()
    assert user == test_cluster.user


def test_memory_limit_is_enforced(test_cluster: ClusterSettings) -> None:
    c = test_cluster
    hog = "python3 -c 'x = bytearray(400 * 1024 * 1024); import time; time.sleep(10)'"
    job_id = sbatch(c, "--mem=64M", "--output=/dev/null", wrap=hog)
    fields = job_state(c, job_id)
    if c.memory_enforcement == "cgroup":
        assert fields["JobState"] == "OUT_OF_MEMORY", fields
    else:  # jobacct_gather OverMemoryKill: killed, but reported as a failed launch
        assert fields["JobState"] == "FAILED", fields


def test_sacct(test_cluster: ClusterSettings) -> None:
    c = test_cluster
    job_id = sbatch(c, "--output=/dev/null", wrap="true")
    assert job_state(c, job_id)["JobState"] == "COMPLETED"
    cmd = f"sacct -n -P -X -j {job_id} -o JobID,State,ExitCode"
    if not c.sacct:
        res = ssh_run(c, cmd, check=False)
        assert res.exit_status != 0
        assert "accounting storage is disabled" in str(res.stderr).lower()
        return
    deadline = time.monotonic() + 30
    while True:  # the job's end record reaches slurmdbd shortly after the job ends
        out = str(ssh_run(c, cmd).stdout).strip()
        if out == f"{job_id}|COMPLETED|0:0" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert out == f"{job_id}|COMPLETED|0:0"


@pytest.fixture
def multi(test_cluster: ClusterSettings, cluster_script: ClusterScript) -> MultiNode:
    """The namespaced nodes (``start --nodes 3``; a no-op when they run)."""
    return start_nodes(test_cluster, cluster_script)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def our_namespaces() -> list[str]:
    return sorted(
        line.split()[0] for line in ip("netns", "list").splitlines() if "pixi-deploy-" in line
    )


def our_links() -> list[str]:
    return sorted(
        line.split(":")[1].strip().split("@")[0]
        for line in ip("-o", "link").splitlines()
        if ": pdtc-" in line
    )


def test_nodes_have_their_own_namespace_address_and_hostname(
    test_cluster: ClusterSettings, multi: MultiNode
) -> None:
    c = test_cluster
    nodes = multi.nodes
    assert {f"pixi-deploy-{n}" for n in nodes} <= set(our_namespaces())
    for node in nodes:
        # one address on the veth end, no route but the nodes' subnet: nothing else reachable
        index = int(node.removeprefix("node"))
        addrs = ip("-n", f"pixi-deploy-{node}", "-4", "-o", "addr", "show", "dev", "eth0")
        assert f"inet 10.213.0.{10 + index}/24" in addrs
        routes = ip("-n", f"pixi-deploy-{node}", "-4", "route").strip().splitlines()
        assert [r.split()[0] for r in routes] == ["10.213.0.0/24"]
    # the host's end: the bridge, and the subnet routed to it only
    host_routes = [r for r in ip("-4", "route").splitlines() if r.startswith("10.213.0.")]
    assert host_routes and all("dev pdtc-br0" in r for r in host_routes)
    # the default partition still has localhost alone; the nodes are in "multi"
    assert str(ssh_run(c, "sinfo -h -p debug -o %N").stdout).strip() == "localhost"
    out = ssh_run(c, f"srun -p {multi.partition} -N{len(nodes)} hostname")
    assert set(str(out.stdout).split()) <= set(nodes)
    assert len(set(str(out.stdout).split())) == len(nodes)
    # each node its own /tmp (and /dev/shm): a file made on one is not on another, nor here
    first, second = nodes[:2]
    mark = f"mark-{os.getpid()}-{time.monotonic_ns()}"
    part = f"-p {multi.partition}"
    for folder in ("/tmp", "/dev/shm"):
        ssh_run(c, f"srun {part} -w {first} touch {folder}/{mark}")
        seen = ssh_run(c, f"srun {part} -w {first},{second} -N2 sh -c 'ls {folder}/{mark} | wc -l'")
        assert sorted(str(seen.stdout).split()) == ["0", "1"], seen
        assert not Path(folder, mark).exists()
        ssh_run(c, f"srun {part} -w {first} rm {folder}/{mark}")


def test_adding_a_node_to_a_running_cluster_restarts_nothing(
    test_cluster: ClusterSettings, cluster_script: ClusterScript, multi: MultiNode
) -> None:
    c = test_cluster
    run_dir = c.state_dir / "run"
    core = ("munged", "slurmctld", "slurmd", "sshd")
    before = {name: (run_dir / f"{name}.pid").read_text() for name in core}
    job_id = sbatch(c, "--output=/dev/null", wrap="sleep 120")  # on localhost
    proc = cluster_script.run("start", "--nodes", "4")
    assert proc.returncode == 0, proc.stderr
    assert "node4" in cluster_script.parse_exports(proc.stdout)["PIXI_DEPLOY_TEST_NODES"]
    assert {name: (run_dir / f"{name}.pid").read_text() for name in core} == before
    queued = str(ssh_run(c, f"squeue -h -j {job_id} -o %T").stdout).strip()
    assert queued in ("RUNNING", "PENDING")  # not cancelled by adding the node
    out = ssh_run(c, f"srun -p {multi.partition} -w node4 hostname")
    assert str(out.stdout).strip() == "node4"
    ssh_run(c, f"scancel {job_id}")


def test_bad_node_arguments_are_one_clear_line(
    test_cluster: ClusterSettings, cluster_script: ClusterScript
) -> None:
    too_many = cluster_script.run("start", "--nodes", "9")
    assert too_many.returncode == 1
    assert "--nodes 9 is out of range" in too_many.stderr
    unknown = cluster_script.run("kill-node", "node42")
    assert unknown.returncode == 1 and "no node 'node42'" in unknown.stderr
    missing = cluster_script.run("kill-node")
    assert missing.returncode == 2 and "kill-node takes one node name" in missing.stderr


def test_stop_then_start_again(
    test_cluster: ClusterSettings, cluster_script: ClusterScript
) -> None:
    """Last test here: stop leaves no daemon behind; start brings the same cluster back."""
    c = test_cluster
    sessions = c.state_dir / "pytest-sessions"
    others = [p.name for p in sessions.glob("[0-9]*") if p.name != str(os.getpid())]
    if any(Path(f"/proc/{pid}").exists() for pid in others):
        pytest.skip(f"other pytest sessions ({', '.join(others)}) use the cluster; not stopping it")
    run_dir = c.state_dir / "run"
    pids = {p.stem: int(p.read_text()) for p in run_dir.glob("*.pid")}
    assert {"munged", "slurmctld", "slurmd", "sshd"} <= set(pids)
    assert all(alive(pid) for pid in pids.values())
    nodes = [name.removeprefix("slurmd-") for name in pids if name.startswith("slurmd-")]
    # a running job is cancelled by stop
    sbatch(c, "--output=/dev/null", wrap="sleep 300")

    stop = cluster_script.run("stop")
    assert stop.returncode == 0, stop.stderr
    left = {name: pid for name, pid in pids.items() if alive(pid)}
    assert not left, f"still running after stop: {left}"
    assert not list(run_dir.glob("*.pid"))
    assert our_namespaces() == [] and our_links() == []  # every namespace and link is gone
    assert cluster_script.run("status").returncode != 0
    again = cluster_script.run("stop")  # idempotent
    assert again.returncode == 0, again.stderr
    # what a crash would leave: a namespace (with a process in it) and a veth pair
    subprocess.run(["ip", "netns", "add", "pixi-deploy-node9"], check=True)
    subprocess.run(
        ["ip", "link", "add", "pdtc-node2", "type", "veth", "peer", "name", "pdtc-node2-n"],
        check=True,
    )
    stray = subprocess.Popen(["ip", "netns", "exec", "pixi-deploy-node9", "sleep", "600"])

    args = ["start", "--accounting"] if c.sacct else ["start"]
    start = cluster_script.run(*args)
    assert start.returncode == 0, start.stderr
    assert cluster_script.settings(start.stdout) == c
    assert stray.wait(30) == -9  # the crash's leftovers were cleared: process, namespace, link
    assert our_namespaces() == [] and our_links() == []
    assert "removed the namespaces and links" in start.stderr
    assert str(ssh_run(c, "squeue -h -o %i").stdout).strip() == ""
    job_id = sbatch(c, "--output=/dev/null", wrap="true")
    assert job_state(c, job_id)["JobState"] == "COMPLETED"
    # a controller started by an older script (no FUTURE nodes in its config; here: its
    # layout record removed) is restarted to add nodes, briefly: jobs and sshd live on
    (run_dir / "slurmctld.layout").unlink()
    sshd_pid = (run_dir / "sshd.pid").read_text()
    ctld_pid = (run_dir / "slurmctld.pid").read_text()
    long_job = sbatch(c, "--output=/dev/null", wrap="sleep 120")
    upgrade = cluster_script.run("start", "--nodes", str(max(len(nodes), 3)))
    assert upgrade.returncode == 0, upgrade.stderr
    assert "restarting slurmctld" in upgrade.stderr
    assert (run_dir / "slurmctld.pid").read_text() != ctld_pid
    assert (run_dir / "sshd.pid").read_text() == sshd_pid
    state = str(ssh_run(c, f"squeue -h -j {long_job} -o %T").stdout).strip()
    assert state in ("RUNNING", "PENDING"), state  # the job survived the restart
    out = ssh_run(c, "srun -p multi -N3 hostname")
    assert len(set(str(out.stdout).split())) == 3
    ssh_run(c, f"scancel {long_job}")
