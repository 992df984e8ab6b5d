#!/usr/bin/env python3
"""Benchmark pixi-deploy's Slurm layer against bare sbatch over SSH (issue 4, part 5).

Measured in ONE run against the test cluster (``scripts/test-cluster``, started if needed):

* submit -> done for a trivial job through ``SlurmClient.submit().wait()`` (job script, run
  folder, env lock, exit code via sacct, log tails) vs the bare minimum a script would do:
  ``sbatch --parsable --wrap true`` over an already open asyncssh connection, then polling
  ``squeue`` at the same interval until the job is COMPLETED. Interleaved, median of --repeat.
  (A bare baseline with the ``ssh`` CLI pays a new connection per command and is slower.)
* the start latency of a step in a SlurmSession (``srun --overlap`` in a held allocation):
  time from ``session.run`` to the step's first output line, and to its end.
* --jobs concurrent runs from one process (one thread each): SSH connections opened (goal:
  exactly 1) and squeue calls per second (one poller for all waiters).

Goals: <= 1.2x bare sbatch, a session step <= 0.5 s, exactly one SSH connection.

    python benchmarks/bench_slurm.py [--repeat 10] [--jobs 100]
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import asyncssh

from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient, SlurmSession
from pixi_deploy.transport import SSHSettings, Transport

REPO = Path(__file__).resolve().parent.parent
POLL = 0.25


def cluster_settings() -> dict[str, str]:
    script = REPO / "scripts" / "test-cluster"
    status = subprocess.run([script, "status"], capture_output=True, check=False)
    command = "env" if status.returncode == 0 else "start"
    out = subprocess.run([script, command], capture_output=True, text=True, check=True).stdout
    values = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, value = words[1].split("=", 1)
            values[name] = value
    return values


async def bare_sbatch(conn: asyncssh.SSHClientConnection) -> float:
    started = time.perf_counter()
    result = await conn.run("sbatch --parsable --wrap true", check=True)
    job_id = str(result.stdout).strip().split(";")[0]
    while True:
        state = await conn.run(f"squeue -h -t all -j {job_id} -o %T", check=False)
        text = str(state.stdout).strip()
        if text in ("COMPLETED", "FAILED", "CANCELLED") or (state.exit_status != 0):
            return time.perf_counter() - started
        await asyncio.sleep(POLL)


def ours(client: SlurmClient) -> float:
    started = time.perf_counter()
    result = client.submit(JobSpec(command=["true"])).wait(poll_interval=POLL)
    assert result.ok, result.message()
    return time.perf_counter() - started


def session_steps(client: SlurmClient, repeat: int) -> tuple[list[float], list[float]]:
    first_line: list[float] = []
    total: list[float] = []
    with SlurmSession(client, JobResources(cpus_per_task=1)) as session:
        session.run(JobSpec(command=["true"]))  # warm-up
        for _ in range(repeat):
            seen: list[float] = []
            started = time.perf_counter()
            result = session.run(
                JobSpec(command=["echo", "hi"]),
                on_stdout=lambda line, s=seen: s.append(time.perf_counter()),
            )
            total.append(time.perf_counter() - started)
            assert result.ok and seen
            first_line.append(seen[0] - started)
    return first_line, total


def concurrent(transport: Transport, base: str, jobs: int) -> tuple[int, float, float, int]:
    client = SlurmClient(transport, base, poll_interval=0.5)
    before = transport.stats.connections_opened
    ok = [0]
    lock = threading.Lock()

    def one() -> None:
        result = client.submit(JobSpec(command=["true"])).wait()
        with lock:
            ok[0] += result.ok

    started = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    opened = transport.stats.connections_opened - before
    return opened, client.squeue_calls / elapsed, elapsed, ok[0]


async def main_async(args: argparse.Namespace) -> None:
    env = cluster_settings()
    host, port, user = env["SLURM_EDGE_NODE_HOST"], int(env["SLURM_EDGE_NODE_PORT"]), "pdtest"
    key, known = env["SLURM_EDGE_NODE_KEY_PATH"], env["SLURM_EDGE_NODE_KNOWN_HOSTS"]
    base = f"{env['SLURM_DEPLOYMENT_BASE_PATH']}/bench-{uuid.uuid4().hex[:8]}"
    settings = SSHSettings(
        host=host,
        port=port,
        user=user,
        key_path=Path(key),
        known_hosts=Path(known),
        ssh_config=None,
    )
    conn = await asyncssh.connect(
        host, port=port, username=user, client_keys=[key], known_hosts=known
    )
    loop = asyncio.get_running_loop()
    with Transport(settings) as transport:
        client = SlurmClient(transport, base, poll_interval=POLL)
        await loop.run_in_executor(None, ours, client)  # warm-up: connection, probe
        await bare_sbatch(conn)
        bare_times: list[float] = []
        our_times: list[float] = []
        for _ in range(args.repeat):
            bare_times.append(await bare_sbatch(conn))
            our_times.append(await loop.run_in_executor(None, ours, client))
        first, total = await loop.run_in_executor(None, session_steps, client, args.repeat)
        opened, rate, elapsed, ok = await loop.run_in_executor(
            None, concurrent, transport, base, args.jobs
        )
        total_opened = transport.stats.connections_opened
    conn.close()
    bare, mine = statistics.median(bare_times), statistics.median(our_times)
    rows = [
        ("bare sbatch + squeue polling (median)", f"{bare:.3f} s", ""),
        (
            "pixi-deploy submit -> wait (median)",
            f"{mine:.3f} s",
            f"{mine / bare:.2f}x (goal <= 1.2x)",
        ),
        (
            "session step: first output line (median)",
            f"{statistics.median(first):.3f} s",
            "goal <= 0.5 s",
        ),
        ("session step: start to end (median)", f"{statistics.median(total):.3f} s", ""),
        (f"{args.jobs} concurrent runs: wall time", f"{elapsed:.1f} s", f"{ok}/{args.jobs} ok"),
        (f"{args.jobs} concurrent runs: SSH connections opened", str(opened), "goal: 1 (reused)"),
        ("whole benchmark: SSH connections opened", str(total_opened), "goal: 1"),
        (f"{args.jobs} concurrent runs: squeue calls per second", f"{rate:.2f}", "one poller"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>10}  {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=100)
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
