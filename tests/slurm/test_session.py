"""SlurmSession against the real cluster: steps in one allocation, limits, release on error."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pixi_deploy.slurm import JobResources, JobResult, JobSpec, SlurmClient, SlurmSession

pytestmark = pytest.mark.cluster


def test_steps_run_in_one_allocation(client: SlurmClient, demo_env: str) -> None:
    with SlurmSession(client, JobResources(cpus_per_task=1, mem="500M")) as session:
        assert session.job is not None
        holder = session.job.id
        lines: list[str] = []
        ok = session.run(
            JobSpec(
                command=["sh", "-c", 'greet; echo "job=$SLURM_JOB_ID secret=$S"'],
                environment_path=demo_env,
                secrets={"S": "x1"},
            ),
            on_stdout=lines.append,
        )
        assert ok.ok, ok.stderr_tail
        assert lines[0].startswith("hello from greet") and f"job={holder} secret=x1" in lines
        failed = session.run(JobSpec(script="echo bad >&2; exit 5"))
        assert (failed.state, failed.exit_code) == ("FAILED", 5)
        assert "bad" in failed.stderr_tail
        slow = session.run(JobSpec(script="sleep 30"), timeout=1)
        assert slow.state == "TIMEOUT"
        # after a step timed out, the next one still runs inside the same allocation
        after: list[str] = []
        assert session.run(JobSpec(script='echo "job=$SLURM_JOB_ID"'), on_stdout=after.append).ok
        assert after == [f"job={holder}"]
        assert client.status(holder).running
    assert client.status(holder).state in ("CANCELLED", "COMPLETING")


def test_concurrent_steps_are_limited(client: SlurmClient) -> None:
    with SlurmSession(client, JobResources(cpus_per_task=1), max_concurrent_steps=2) as session:

        def step(i: int) -> JobResult:
            return session.run(JobSpec(script=f"sleep 1; echo {i}"))

        with ThreadPoolExecutor(5) as pool:
            results = list(pool.map(step, range(5)))
        assert session.peak_concurrent_steps == 2
    assert [r.stdout_tail for r in results] == [str(i) for i in range(5)]
    assert all(r.ok for r in results)


def test_allocation_is_released_after_an_error(client: SlurmClient, transport) -> None:
    holder = None
    with pytest.raises(RuntimeError, match="boom"):
        with SlurmSession(client, JobResources()) as session:
            assert session.job is not None
            holder = session.job.id
            raise RuntimeError("boom")
    assert holder is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        active = transport.run(["squeue", "-h", "-j", holder, "-o", "%T"], check=False).stdout
        if active.strip() in ("", "CANCELLED"):
            break
        time.sleep(0.2)
    assert active.strip() in ("", "CANCELLED")


def test_step_out_of_memory(client: SlurmClient) -> None:
    alloc = b"b = [bytearray(10 * 1024 * 1024) for _ in range(50)]\nprint('allocated')\n"
    with SlurmSession(client, JobResources(mem="300M")) as session:
        result = session.run(
            JobSpec(
                command=["python3", "alloc.py"],
                files={"alloc.py": alloc},
                resources=JobResources(mem="50M"),
            )
        )
    assert result.state == "OUT_OF_MEMORY", result
    assert "raise --mem" in result.message()
