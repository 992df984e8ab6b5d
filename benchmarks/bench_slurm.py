#!/usr/bin/env python3
"""Benchmark pixi-deploy's Slurm layer against bare sbatch over SSH (issues 4 and 17).

Measured in ONE run against the test cluster (``scripts/test-cluster start --nodes 3``; the
nodes are added to a running cluster), each figure next to its floor from the same run: bare
``sbatch --parsable`` over an already open asyncssh connection, then polling ``squeue`` every
0.25 s until the job has ended. Rounds are interleaved (floor, ours, floor, ours...), medians
reported. The multi-node figures use the namespaced nodes' partition (``multi``), where no
other test session's jobs queue.

* submit -> done, trivial job: ``SlurmClient.submit().wait()`` (job script, run folder, env
  lock, exit code, log tails) vs ``sbatch --wrap true``. Goal <= 1.2x.
* multi-node submit -> done: a 2-node job running ``srun true`` vs the same bare.
* a step in a SlurmSession: session.run -> first output line, and -> end. Goal <= 0.5 s.
* ``Executor.submit`` of a trivial function -> ``result()`` (pickles up, python + cloudpickle
  on the node, result file back) vs ``sbatch --wrap true``. Goal <= 1.3x. Shown too: a bare
  sbatch of ``python3 -c 'import pickle'``, i.e. what starting Python on the node costs.
* a 2-node Ray job's start-up, allocation granted -> driver running: the RayLauncher's own
  reading (launcher start -> Ray up, ms), and Slurm's StartTime -> the driver's first line
  after ``ray.init()`` (StartTime has 1 s resolution; a plain 2-node job measured the same way
  is its floor). Goal <= 5 s.
* a --array-task ``Executor.map_array`` followed to its last result from one process: squeue
  calls per second (goal <= 1), SSH connections (goal 1), wall time vs a bare
  ``sbatch --array`` followed by squeue polling; CPU time and peak RSS of this process.
* --jobs concurrent runs from one process (one thread each, partition multi): SSH
  connections (goal 1), squeue calls per second, CPU time and peak RSS.

    python benchmarks/bench_slurm.py [--repeat 10] [--jobs 200] [--array 1000] [--no-ray]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh

from pixi_deploy.launchers import RayLauncher
from pixi_deploy.pack import DownloadCache
from pixi_deploy.slurm import Executor, JobResources, JobSpec, SlurmClient, SlurmSession
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the tests' workspace builders (python, ray, cloudpickle)
POLL = 0.25
RAY_DRIVER = b"""
import time, ray
ray.init()
print("DRIVER_READY", time.time(), flush=True)
print("CPUS", int(ray.cluster_resources()["CPU"]))
"""


def noop(x: int = 0) -> int:
    return x


def cluster_settings() -> dict[str, str]:
    script = REPO / "scripts" / "test-cluster"
    out = subprocess.run(
        [script, "start", "--nodes", "3"], capture_output=True, text=True, check=True
    ).stdout
    values = {}
    for line in out.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            name, value = words[1].split("=", 1)
            values[name] = value
    return values


class Bare:
    """The floor: sbatch and squeue over one open asyncssh connection, as a script would."""

    def __init__(self, conn: asyncssh.SSHClientConnection, loop: asyncio.AbstractEventLoop):
        self.conn, self.loop = conn, loop
        self.squeue_calls = 0

    def run(self, command: str) -> str:
        future = asyncio.run_coroutine_threadsafe(self.conn.run(command, check=False), self.loop)
        return str(future.result().stdout)

    def sbatch(self, options: str) -> float:
        started = time.perf_counter()
        job_id = self.run(f"sbatch --parsable {options}").strip().split(";")[0]
        while True:
            self.squeue_calls += 1
            text = self.run(f"squeue -h -t all -j {job_id} -o %T").split()
            if text and all(s in ("COMPLETED", "FAILED", "CANCELLED") for s in text):
                return time.perf_counter() - started
            time.sleep(POLL)


def interleaved(repeat: int, floor: Callable[[], float], ours: Callable[[], float]) -> tuple:
    floor(), ours()  # warm-up
    pairs = [(floor(), ours()) for _ in range(repeat)]
    bare = statistics.median(p[0] for p in pairs)
    mine = statistics.median(p[1] for p in pairs)
    paired = statistics.median(p[1] / p[0] for p in pairs)
    return bare, mine, paired


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def session_steps(client: SlurmClient, repeat: int) -> tuple[float, float]:
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
    return statistics.median(first_line), statistics.median(total)


def ray_startup(
    transport: Transport, base: str, bare: Bare, partition: str, repeat: int
) -> tuple[float, float, float]:
    """(launcher's start-up ms, StartTime -> driver ready s, plain job StartTime -> first
    line s), medians."""
    from launchers.ray_workspace import WHEELS, make_ray_workspace

    with tempfile.TemporaryDirectory() as tmp:
        workspace = make_ray_workspace(Path(tmp))
        env = RemoteStore(transport, base).deploy(
            load_workspace(workspace), cache=DownloadCache(WHEELS / "cache")
        )
    client = SlurmClient(transport, base, poll_interval=POLL)
    resources = JobResources(
        partition=partition, nodes=2, ntasks_per_node=1, cpus_per_task=1, mem="1500M", time="10"
    )
    launcher, ready, plain = [], [], []
    for _ in range(repeat):
        spec = JobSpec(
            command=["python", "driver.py"],
            environment_path=env.deployment_path,
            files={"driver.py": RAY_DRIVER},
            launcher=RayLauncher(),
            resources=resources,
        )
        job = client.submit(spec)
        result = job.wait(timeout=600)
        assert result.ok, result.stderr_tail[-2000:]
        up = re.search(r"Ray is up on 2 node\(s\) after (\d+) ms", result.stderr_tail)
        assert up, result.stderr_tail[-2000:]
        launcher.append(int(up.group(1)) / 1000)
        driver_at = float(re.search(r"DRIVER_READY (\S+)", result.stdout_tail).group(1))
        ready.append(driver_at - start_time(bare, job.id))
        plain_job = client.submit(JobSpec(command=["sh", "-c", "date +%s.%N"], resources=resources))
        plain_result = plain_job.wait(timeout=600)
        plain.append(float(plain_result.stdout_tail.split()[0]) - start_time(bare, plain_job.id))
    return statistics.median(launcher), statistics.median(ready), statistics.median(plain)


def start_time(bare: Bare, job_id: str) -> float:
    out = bare.run(f"sacct -n -X -P -j {job_id} -o Start --noconvert") or ""
    stamp = out.strip().splitlines()[0] if out.strip() else ""
    if not stamp or stamp == "Unknown":
        text = bare.run(f"scontrol show job -o {job_id}")
        stamp = re.search(r"StartTime=(\S+)", text).group(1)
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))


def array_follow(executor: Executor, bare: Bare, partition: str, size: int) -> dict[str, float]:
    transport = executor.transport
    opened = transport.stats.connections_opened
    cpu0, t0 = time.process_time(), time.perf_counter()
    jobs = executor.map_array(noop, range(size))
    client = jobs[0].job.client
    calls0 = client.squeue_calls
    values = [job.result(timeout=3600) for job in jobs]
    ours = time.perf_counter() - t0
    assert values == list(range(size))
    stats = {
        "ours": ours,
        "rate": (client.squeue_calls - calls0) / ours,
        "connections": transport.stats.connections_opened - opened,
        "cpu": time.process_time() - cpu0,
    }
    calls0 = bare.squeue_calls
    floor = timed(lambda: bare.sbatch(f"-p {partition} --array=0-{size - 1} --wrap true"))
    stats["floor"] = floor
    stats["floor_rate"] = (bare.squeue_calls - calls0) / floor
    return stats


def concurrent(transport: Transport, base: str, jobs: int, partition: str) -> dict[str, float]:
    client = SlurmClient(transport, base, poll_interval=0.5)
    resources = JobResources(partition=partition)
    before = transport.stats.connections_opened
    ok = [0]
    lock = threading.Lock()

    def one() -> None:
        result = client.submit(JobSpec(command=["true"], resources=resources)).wait()
        with lock:
            ok[0] += result.ok

    cpu0, started = time.process_time(), time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "connections": transport.stats.connections_opened - before,
        "rate": client.squeue_calls / elapsed,
        "elapsed": elapsed,
        "ok": ok[0],
        "cpu": time.process_time() - cpu0,
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> list[tuple[str, str, str]]:
    env = cluster_settings()
    host, port, user = env["SLURM_EDGE_NODE_HOST"], int(env["SLURM_EDGE_NODE_PORT"]), "pdtest"
    key, known = env["SLURM_EDGE_NODE_KEY_PATH"], env["SLURM_EDGE_NODE_KNOWN_HOSTS"]
    partition = env["PIXI_DEPLOY_TEST_MULTI_PARTITION"]
    base = f"{env['SLURM_DEPLOYMENT_BASE_PATH']}/bench-{uuid.uuid4().hex[:8]}"
    settings = SSHSettings(
        host=host,
        port=port,
        user=user,
        key_path=Path(key),
        known_hosts=Path(known),
        ssh_config=None,
        base_path=base,
    )

    async def connect() -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            host, port=port, username=user, client_keys=[key], known_hosts=known
        )

    conn = asyncio.run_coroutine_threadsafe(connect(), loop).result()
    bare = Bare(conn, loop)
    rows: list[tuple[str, str, str]] = []
    multi = JobResources(partition=partition, nodes=2, ntasks_per_node=1)
    with Transport(settings) as transport:
        client = SlurmClient(transport, base, poll_interval=POLL)

        def ours(spec: JobSpec) -> Callable[[], float]:
            return lambda: timed(lambda: client.submit(spec).wait(poll_interval=POLL))

        b, m, p = interleaved(
            args.repeat, lambda: bare.sbatch("--wrap true"), ours(JobSpec(command=["true"]))
        )
        rows += [
            ("bare sbatch + squeue polling, default partition", f"{b:.3f} s", ""),
            (
                "submit -> done, trivial job",
                f"{m:.3f} s",
                f"{m / b:.2f}x, paired {p:.2f}x (<= 1.2x)",
            ),
        ]
        b, m, p = interleaved(
            args.repeat,
            lambda: bare.sbatch(f"-p {partition} -N2 --wrap 'srun true'"),
            ours(JobSpec(command=["srun", "true"], resources=multi)),
        )
        rows += [
            ("bare 2-node sbatch (srun true) + squeue polling", f"{b:.3f} s", ""),
            ("multi-node submit -> done (2 nodes)", f"{m:.3f} s", f"{m / b:.2f}x, paired {p:.2f}x"),
        ]
        first, total = session_steps(client, args.repeat)
        rows += [
            ("session step: first output line", f"{first:.3f} s", "goal <= 0.5 s"),
            ("session step: start to end", f"{total:.3f} s", ""),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            from slurm.executor_workspace import make_executor_workspace

            executor = Executor(
                manifest_path=make_executor_workspace(Path(tmp)) / "pixi.toml",
                resources=JobResources(partition=partition),
                transport=transport,
                cache_dir=Path(tmp) / "cache",
                poll_interval=POLL,  # as the floor's squeue polling
            )
            executor.environment_path()  # deploy once, outside the timing
            b, m, p = interleaved(
                args.repeat,
                lambda: bare.sbatch(f"-p {partition} --wrap true"),
                lambda: timed(lambda: executor.submit(noop, 1).result()),
            )
            py = statistics.median(
                bare.sbatch(f"-p {partition} --wrap \"python3 -c 'import pickle'\"")
                for _ in range(args.repeat)
            )
            rows += [
                ("bare sbatch + squeue polling, partition multi", f"{b:.3f} s", ""),
                (
                    "Executor.submit(trivial) -> result()",
                    f"{m:.3f} s",
                    f"{m / b:.2f}x, paired {p:.2f}x (<= 1.3x)",
                ),
                (
                    "bare sbatch of python3 -c 'import pickle' (where time goes)",
                    f"{py:.3f} s",
                    f"Executor {m / py:.2f}x of it",
                ),
            ]
            if args.array:
                a = array_follow(executor, bare, partition, args.array)
                rows += [
                    (
                        f"bare sbatch --array of {args.array} + squeue polling",
                        f"{a['floor']:.1f} s",
                        f"{a['floor_rate']:.1f} squeue/s",
                    ),
                    (
                        f"Executor.map_array({args.array}) -> every result",
                        f"{a['ours']:.1f} s",
                        f"{a['ours'] / a['floor']:.2f}x",
                    ),
                    (
                        "  squeue calls per second while following it",
                        f"{a['rate']:.2f}",
                        "goal <= 1",
                    ),
                    ("  SSH connections opened", str(a["connections"]), "goal 0 (reused)"),
                    ("  CPU time of this process", f"{a['cpu']:.1f} s", ""),
                    ("  peak RSS of this process so far", f"{peak_rss_mb():.0f} MB", ""),
                ]
        if args.ray:
            launcher, ready, plain = ray_startup(transport, base, bare, partition, args.ray_repeat)
            rows += [
                (
                    "2-node Ray: launcher start -> Ray up (its own reading)",
                    f"{launcher:.2f} s",
                    "goal <= 5 s",
                ),
                ("2-node Ray: StartTime -> driver ready (1 s resolution)", f"{ready:.2f} s", ""),
                (
                    "plain 2-node job: StartTime -> first line (same method)",
                    f"{plain:.2f} s",
                    "floor",
                ),
                (
                    "2-node Ray start-up over the allocation",
                    f"{ready - plain:.2f} s",
                    "goal <= 5 s",
                ),
            ]
        c = concurrent(transport, base, args.jobs, partition)
        rows += [
            (f"{args.jobs} concurrent runs: wall time", f"{c['elapsed']:.1f} s", f"{c['ok']}/{args.jobs} ok"),
            (f"{args.jobs} concurrent runs: SSH connections opened", str(c["connections"]), "goal 0 (reused)"),
            (f"{args.jobs} concurrent runs: squeue calls per second", f"{c['rate']:.2f}", "one poller"),
            (f"{args.jobs} concurrent runs: CPU time of this process", f"{c['cpu']:.1f} s", ""),
            ("whole benchmark: SSH connections opened", str(transport.stats.connections_opened), "goal 1"),
            ("whole benchmark: peak RSS of this process", f"{peak_rss_mb():.0f} MB", ""),
        ]  # fmt: skip
    conn.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--array", type=int, default=1000, help="0 skips the array figure")
    parser.add_argument("--ray-repeat", type=int, default=3)
    parser.add_argument("--no-ray", dest="ray", action="store_false")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    rows = run(args, loop)
    loop.call_soon_threadsafe(loop.stop)
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement'.ljust(width)}  {'value':>10}  note")
    for name, value, note in rows:
        print(f"{name.ljust(width)}  {value:>10}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
