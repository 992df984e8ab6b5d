"""Job dependencies: ``after=[job]`` / ``--dependency`` run pipelines in order, and a
dependency that can never be met ends the job with a clear result instead of a wait forever."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixi_deploy import api
from pixi_deploy.errors import SchedulerError
from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient
from pixi_deploy.slurm.spec import check_dependency, dependency_on
from pixi_deploy.transport import SSHSettings, Transport

pytestmark = pytest.mark.cluster


def test_dependency_syntax_is_checked_before_anything_is_sent() -> None:
    assert check_dependency("afterok:12:13,afterany:14") == "afterok:12:13,afterany:14"
    assert check_dependency("afterok:12_3?afternotok:4") == "afterok:12_3?afternotok:4"
    assert dependency_on(["12", "13"]) == "afterok:12:13"
    for bad in ("afterok", "afterok:12;rm -rf /", "later:12", "afterok:12,afterok:13?after:1"):
        with pytest.raises(SchedulerError, match="is not a Slurm dependency"):
            check_dependency(bad)
    with pytest.raises(SchedulerError, match="not a Slurm dependency"):
        JobSpec(command=["true"], dependency="afterok:x").check()


def test_a_pipeline_runs_in_order(
    settings: SSHSettings, base: str, demo_env: str, multi_node_cluster
) -> None:
    marker = f"{base}/first-done"
    # in partition multi: the shared debug partition may be busy with other sessions' jobs
    resources = JobResources(partition=multi_node_cluster.partition)
    with Transport(settings.with_changes(base_path=base)) as transport:
        first = api.submit(
            ["sh", "-c", f"sleep 3; echo first > {marker}"],
            resources=resources,
            environment_path=demo_env,
            transport=transport,
        )
        # without the dependency this would start at once and fail: the marker is not there
        second = api.submit(
            ["sh", "-c", f'cat {marker} || {{ echo "started too early" >&2; exit 4; }}'],
            after=[first],
            resources=resources,
            environment_path=demo_env,
            transport=transport,
        )
        third = api.submit(
            ["sh", "-c", "greet | head -n 1"],
            dependency=f"afterok:{second.id}",
            resources=resources,
            environment_path=demo_env,
            transport=transport,
        )
        assert "--dependency=afterok:" in transport.read_bytes(f"{second.run_dir}/job.sh").decode()
        results = [job.wait(timeout=300) for job in (first, second, third)]
    for result in results:
        assert result.ok, f"{result.message()}\n{result.stderr_tail}"
    assert results[1].stdout_tail.strip() == "first"
    assert results[2].stdout_tail.startswith("hello from greet")


def test_a_failed_dependency_is_a_clear_result(
    any_client: SlurmClient, demo_env: str, multi_node_cluster
) -> None:
    resources = JobResources(partition=multi_node_cluster.partition)
    failing = any_client.submit(
        JobSpec(command=["sh", "-c", "exit 3"], environment_path=demo_env, resources=resources)
    )
    waiting = any_client.submit(
        JobSpec(
            command=["true"],
            environment_path=demo_env,
            dependency=f"afterok:{failing.id}",
            resources=resources,
        )
    )
    assert failing.wait(timeout=300).exit_code == 3
    result = waiting.wait(timeout=300)  # ends by itself; does not pend forever
    assert (result.state, result.reason) == ("CANCELLED", "DependencyNeverSatisfied")
    assert not result.ok
    assert "never ran" in result.message() and "DependencyNeverSatisfied" in result.message()


def test_cli_submit_with_dependency(
    ssh_env, base: str, demo_env: str, tmp_path: Path, cli, monkeypatch, multi_node_cluster
) -> None:
    partition = ["--partition", multi_node_cluster.partition]
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    deployment = tmp_path / "deployment_metadata.json"
    deployment.write_text(
        json.dumps(
            {
                "deployment_path": demo_env,
                "environment": "default",
                "platform": "linux-64",
                "lock_hash": "x",
                "created": "2024-01-01T00:00:00+00:00",
                "target": "ssh://test",
                "activate_script": f"{demo_env}/activate.sh",
            }
        )
    )
    first = cli(
        "submit", "--deployment", deployment, *partition, "--no-follow", "--", "sh", "-c", "exit 1"
    )
    assert first.exit_code == 0, first.stderr
    job_id = first.stdout.strip()
    after = cli(
        "submit", "--deployment", deployment, *partition, "--dependency", f"afterok:{job_id}",
        "--json", "--", "true",
    )  # fmt: skip
    assert after.exit_code == 8
    data = json.loads(after.stdout)
    assert (data["state"], data["reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    assert "never ran" in after.stderr
    bad = cli("submit", "--deployment", deployment, "--dependency", "afterok", "--", "true")
    assert bad.exit_code == 8 and "is not a Slurm dependency" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
