"""Jobs against the real single-node Slurm (scripts/test-cluster): outcomes, not mocks."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pixi_deploy.errors import SchedulerError
from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import Transport

pytestmark = pytest.mark.cluster

ALLOC = b"""
import time
blocks = []
for _ in range(50):
    blocks.append(bytearray(10 * 1024 * 1024))  # 500 MB in total, every page touched
    time.sleep(0.01)
print("allocated", len(blocks) * 10, "MB")
"""


def test_command_in_environment_with_live_output_env_and_secrets(
    client: SlurmClient, transport: Transport, demo_env: str
) -> None:
    spec = JobSpec(
        command=[
            "sh",
            "-c",
            'greet; echo "A=$A"; printf %s "$TOKEN" | sha256sum | cut -c1-16; '
            'ls "$PIXI_DEPLOY_RUN_DIR"; echo to-stderr >&2; sleep 1; echo done',
        ],
        environment_path=demo_env,
        env={"A": "b c"},
        secrets={"TOKEN": "s3 cr$et"},
        resources=JobResources(mem="100M", time="2"),
    )
    job = client.submit(spec)
    out_lines: list[str] = []
    err_lines: list[str] = []
    result = job.wait(on_stdout=out_lines.append, on_stderr=err_lines.append, timeout=60)
    assert result.ok and result.state == "COMPLETED" and result.exit_code == 0
    assert out_lines[0] == f"hello from greet 1.0.0 at {demo_env}"
    assert "A=b c" in out_lines and out_lines[-1] == "done"
    assert hashlib.sha256(b"s3 cr$et").hexdigest()[:16] in out_lines
    assert "secrets.env" not in out_lines  # sourced, then removed before the command ran
    assert err_lines == ["to-stderr"]
    job_script = transport.read_bytes(f"{job.run_dir}/job.sh").decode()
    assert "s3 cr$et" not in job_script and "export TOKEN" not in job_script
    assert "#SBATCH --mem=100M" in job_script and "#SBATCH --time=2" in job_script
    assert not transport.exists(f"{job.run_dir}/secrets.env")
    # reattach by id from a second client: same run folder, same logs
    again = SlurmClient(transport, client.base).job(job.id)
    assert again.run_dir == job.run_dir and again.mem == "100M"
    stdout, stderr = again.logs()
    assert stdout.splitlines() == out_lines and stderr.strip() == "to-stderr"
    assert again.wait(timeout=10).state == "COMPLETED"


def test_secrets_file_is_private_and_never_on_a_command_line(
    client: SlurmClient, transport: Transport
) -> None:
    spec = JobSpec(
        script='stat -c "%a" "$PIXI_DEPLOY_RUN_DIR" "$PIXI_DEPLOY_RUN_DIR/job.sh"; '
        'ps -eo args | grep -c "super-secret-value" ; echo "$PW"',
        secrets={"PW": "super-secret-value"},
        array="0",  # array tasks keep the file until the client cleans up
    )
    result = client.submit(spec).wait(timeout=60)
    assert result.ok, result.message()
    lines = result.stdout_tail.split()
    assert lines[:2] == ["700", "700"]
    assert lines[2] == "1"  # only the grep itself carries the text
    assert lines[3] == "super-secret-value"


def test_nonzero_exit_is_failed_with_exit_code(any_client: SlurmClient) -> None:
    job = any_client.submit(JobSpec(script="echo oops >&2; exit 3"))
    result = job.wait(timeout=60)
    assert (result.state, result.exit_code, result.signal) == ("FAILED", 3, None)
    with pytest.raises(SchedulerError, match=f"job {job.id} failed with exit code 3: oops"):
        result.raise_for_state()
    # with accounting, sacct answers once slurmdbd has recorded the end (a moment after the
    # job ended; until then scontrol does, by design): give it a few seconds to catch up. On a
    # cluster without accounting (scripts/test-cluster start without --accounting), sacct
    # answers nothing and scontrol must
    has_accounting = SlurmClient(any_client.transport, any_client.base).use_sacct
    expected = "sacct" if any_client.use_sacct and has_accounting else "scontrol"
    deadline = time.monotonic() + 15
    while (source := any_client.states([job.id])[job.id].source) != expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert source == expected


def test_out_of_memory(any_client: SlurmClient) -> None:
    spec = JobSpec(
        command=["python3", "alloc.py"],
        files={"alloc.py": ALLOC},
        resources=JobResources(mem="50M"),
    )
    result = any_client.submit(spec).wait(timeout=120)
    assert result.state == "OUT_OF_MEMORY", (result, result.stderr_tail)
    assert "allocated" not in result.stdout_tail
    with pytest.raises(SchedulerError, match=r"ran out of memory \(--mem=50M\); raise --mem"):
        result.raise_for_state()


@pytest.mark.slow
def test_slurm_time_limit_is_timeout(transport: Transport, base: str) -> None:
    # Slurm enforces limits in whole minutes, checked about every 30 s: this takes ~65 s, so
    # one job serves both lookups (sacct, and scontrol as without accounting)
    with_sacct = SlurmClient(transport, base, use_sacct=True, poll_interval=0.25)
    without = SlurmClient(transport, base, use_sacct=False, poll_interval=0.25)
    job = with_sacct.submit(JobSpec(script="sleep 300", resources=JobResources(time="1")))
    result = job.wait()
    assert result.state == "TIMEOUT"
    assert "hit its time limit (1); raise --time" in result.message()
    again = without.job(job.id).result()
    assert (again.state, again.message()) == (result.state, result.message())
    assert without.status(job.id).source == "scontrol"


def test_wait_timeout_counts_running_time_only(client: SlurmClient) -> None:
    # queued for ~12 s (--begin), runs 1 s: an 8 s running-time budget is enough, and would
    # not be if the queued time counted (the slack is for a loaded machine's slow start)
    spec = JobSpec(
        script="sleep 1; echo ran", resources=JobResources(extra_sbatch=["--begin=now+12"])
    )
    started = time.monotonic()
    result = client.submit(spec).wait(timeout=8)
    assert result.state == "COMPLETED" and "ran" in result.stdout_tail, result
    assert time.monotonic() - started > 12
    # runs too long: cancelled by pixi-deploy, reported as TIMEOUT
    job = client.submit(JobSpec(script="echo start; sleep 60"))
    result = job.wait(timeout=2)
    assert result.state == "TIMEOUT" and "2s timeout" in result.reason
    deadline = time.monotonic() + 20
    while job.status().state != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert job.status().state == "CANCELLED"


def test_cancelled_from_outside(any_client: SlurmClient, transport: Transport) -> None:
    job = any_client.submit(JobSpec(script="echo up; sleep 120"))

    def cancel_when_running() -> None:
        while not job.status().running:
            time.sleep(0.2)
        transport.run(["scancel", job.id])

    threading.Thread(target=cancel_when_running, daemon=True).start()
    result = job.wait(timeout=60)
    assert result.state == "CANCELLED"
    assert f"job {job.id} was cancelled" in result.message()


def test_keyboard_interrupt_cancels_the_job(client: SlurmClient) -> None:
    job = client.submit(JobSpec(script="echo first; sleep 120"))

    def interrupt(line: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        job.wait(on_stdout=interrupt)
    deadline = time.monotonic() + 20
    while job.status().state != "CANCELLED" and time.monotonic() < deadline:
        time.sleep(0.3)
    assert job.status().state == "CANCELLED"


def test_connection_lost_during_wait_reconnects_and_keeps_following(
    client: SlurmClient, transport: Transport, drop_connection
) -> None:
    job = client.submit(JobSpec(script="for i in $(seq 1 12); do echo line $i; sleep 0.5; done"))
    lines: list[str] = []
    killed: list[int] = []

    def kill_later() -> None:
        while len(lines) < 3:
            time.sleep(0.05)
        killed.extend(drop_connection(transport))

    threading.Thread(target=kill_later, daemon=True).start()
    result = job.wait(on_stdout=lines.append, timeout=120)
    assert killed, "no sshd process was found for our connection"
    assert result.state == "COMPLETED"
    assert lines == [f"line {i}" for i in range(1, 13)]  # each line exactly once
    assert transport.stats.reconnects >= 1


def test_missing_environment_fails_before_submitting(client: SlurmClient, base: str) -> None:
    spec = JobSpec(command=["true"], environment_path=f"{base}/envs/0123456789abcdef")
    with pytest.raises(SchedulerError, match="does not exist on the cluster.*deploy it again"):
        client.submit(spec)


def test_environment_pruned_before_the_job_starts(
    client: SlurmClient, transport: Transport, base: str, demo_env: str
) -> None:
    spec = JobSpec(
        command=["greet"],
        environment_path=demo_env,
        resources=JobResources(extra_sbatch=["--begin=now+3"]),
    )
    job = client.submit(spec)
    assert RemoteStore(transport, base).prune(keep=0) == [demo_env]
    result = job.wait(timeout=60)
    assert (result.state, result.exit_code) == ("FAILED", 97)
    assert "does not exist on the cluster (pruned or never deployed); deploy it again" in (
        result.message()
    )


def test_prune_spares_an_environment_a_running_job_uses(
    client: SlurmClient, transport: Transport, base: str, demo_env: str
) -> None:
    job = client.submit(JobSpec(script="echo started; sleep 3; greet", environment_path=demo_env))
    while not job.status().running:
        time.sleep(0.2)
    time.sleep(0.5)  # past activation: the in-use lock is held
    assert RemoteStore(transport, base).prune(keep=0) == []
    result = job.wait(timeout=60)
    assert result.ok and "hello from greet" in result.stdout_tail
    assert RemoteStore(transport, base).prune(keep=0) == [demo_env]  # free once it ended


def test_array_job(any_client: SlurmClient) -> None:
    job = any_client.submit(JobSpec(script='echo "task $SLURM_ARRAY_TASK_ID"', array="0-2%2"))
    result = job.wait(timeout=120)
    assert result.state == "COMPLETED"
    out, _ = job.logs()
    assert sorted(out.split("\n")[:-1]) == ["task 0", "task 1", "task 2"]
    status = job.status()
    assert sorted(status.tasks) == [f"{job.id}_{i}" for i in range(3)]
    failing = any_client.submit(
        JobSpec(script='[ "$SLURM_ARRAY_TASK_ID" = 1 ] && exit 4; true', array="0-2")
    ).wait(timeout=120)
    assert (failing.state, failing.exit_code) == ("FAILED", 4)
    assert "array task" in failing.reason


def test_sbatch_rejects_bad_option_clearly(client: SlurmClient) -> None:
    spec = JobSpec(command=["true"], resources=JobResources(partition="no-such-partition"))
    with pytest.raises(SchedulerError, match="sbatch refused the job: .*partition"):
        client.submit(spec)


def test_many_jobs_share_one_connection_and_one_poller(transport: Transport, base: str) -> None:
    client = SlurmClient(transport, base, poll_interval=0.5)
    jobs = [client.submit(JobSpec(script=f"echo {i}")) for i in range(8)]
    started = time.monotonic()
    with ThreadPoolExecutor(len(jobs)) as pool:
        results = list(pool.map(lambda j: j.wait(timeout=120).stdout_tail.strip(), jobs))
    elapsed = time.monotonic() - started
    assert results == [str(i) for i in range(8)]
    assert transport.stats.connections_opened == 1
    # one squeue per interval for all eight, not one per job
    assert client.squeue_calls <= elapsed / 0.5 + 3
