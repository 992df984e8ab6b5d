"""Mode `local` end to end with real Dagster: Pipes context in, logs/metadata/checks out,
the payload's traceback on failure, interruption stops the payload. No cluster involved."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import pytest

from helpers.processes import gone_within
from pixi_deploy.dagster import (
    BashLauncher,
    ComputeResource,
    ExecutionMode,
    SessionResource,
    SlurmQueueConfig,
    SlurmResource,
    SSHConnectionResource,
    format_pipes_exception,
)

PAYLOADS = Path(__file__).parent / "payloads"


def _numbers_asset(payload: str = "report.py") -> dg.AssetsDefinition:
    @dg.asset(check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
    def numbers(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(PAYLOADS / payload),
            extras={"n": 42},
            extra_env={"GREETING": "hi"},
        ).get_materialize_result()

    return numbers


def _logs(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.user_message for e in instance.all_logs(run_id)]


def test_local_mode_materializes_with_metadata_check_and_logs() -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [_numbers_asset()],
        resources={"compute": ComputeResource(mode="local", default_launcher=BashLauncher())},
        instance=instance,
    )
    assert result.success
    (mat,) = result.asset_materializations_for_node("numbers")
    assert mat.metadata["rows"].value == 42
    assert mat.metadata["greeting"].value == "hi"  # extra_env reached the payload
    assert mat.metadata["pixi_deploy_mode"].value == "local"
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "positive"
    assert any("hello from the payload" in m for m in _logs(instance, result.run_id))


def test_local_payload_exception_fails_with_its_traceback() -> None:
    result = dg.materialize(
        [_numbers_asset("explode.py")],
        resources={"compute": ComputeResource(mode=ExecutionMode.LOCAL)},
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    text = failure.step_failure_data.error.to_string()
    assert "ZeroDivisionError" in text and "explode_here" in text and "x / 0" in text
    assert "exit code 1" in text


def test_local_payload_dying_before_pipes_shows_stderr(tmp_path: Path) -> None:
    payload = tmp_path / "broken.py"
    payload.write_text("import sys\nprint('no pipes here', file=sys.stderr)\nsys.exit(3)\n")

    @dg.asset
    def broken(context: dg.AssetExecutionContext, compute: ComputeResource):
        return compute.run(context=context, payload_path=str(payload)).get_materialize_result()

    result = dg.materialize(
        [broken], resources={"compute": ComputeResource(mode="local")}, raise_on_error=False
    )
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    text = failure.step_failure_data.error.to_string()
    assert "exit code 3" in text and "no pipes here" in text


def test_interrupted_local_run_stops_the_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pid"
    script = textwrap.dedent(
        f"""
        import dagster as dg
        from pixi_deploy.dagster import ComputeResource

        @dg.asset
        def slow(context: dg.AssetExecutionContext, compute: ComputeResource):
            return compute.run(
                context=context,
                payload_path={str(PAYLOADS / "sleeper.py")!r},
                extras={{"marker": {str(marker)!r}, "seconds": 300}},
            ).get_materialize_result()

        dg.materialize([slow], resources={{"compute": ComputeResource(mode="local")}})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        payload_pid = int(marker.read_text())
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone_within(payload_pid, 30)


def test_format_pipes_exception_keeps_the_cause_chain() -> None:
    inner = {"name": "KeyError", "message": "'x'", "stack": ['  File "a.py", line 1\n'], "cause": None, "context": None}  # fmt: skip
    outer = {"name": "RuntimeError", "message": "lookup failed", "stack": [], "cause": inner, "context": None}  # fmt: skip
    text = format_pipes_exception(outer)
    assert text.index("KeyError") < text.index("direct cause") < text.index("RuntimeError")


def test_resources_validate_and_read_the_environment(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="needs slurm"):
        ComputeResource(mode="slurm")
    with pytest.raises(Exception, match="mode must be one of"):
        ComputeResource(mode="cloud")
    key = tmp_path / "id"
    key.write_text("k")
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "login.example.org")
    monkeypatch.setenv("SLURM_EDGE_NODE_PORT", "2222")
    monkeypatch.setenv("SLURM_EDGE_NODE_USER", "me")
    monkeypatch.setenv("SLURM_EDGE_NODE_KEY_PATH", str(key))
    monkeypatch.delenv("SLURM_EDGE_NODE_PASSWORD", raising=False)
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", "/scratch/envs")
    ssh = SSHConnectionResource.from_env(prefix="SLURM_EDGE_NODE_")  # as dagster-slurm's docs
    assert (ssh.host, ssh.port, ssh.user, ssh.key_path) == (
        "login.example.org",
        2222,
        "me",
        str(key),
    )
    settings = ssh.to_settings()
    assert settings.port == 2222 and settings.key_path == key
    slurm = SlurmResource.from_env()
    assert slurm.remote_base == "/scratch/envs"
    with pytest.raises(Exception, match="not both"):
        SSHConnectionResource(host="h", user="u", key_path=str(key), password="pw")
    # the users' docs snippets construct as written
    slurm = SlurmResource(
        ssh=SSHConnectionResource(host="h", port=22, user="u", password="pw"),
        queue=SlurmQueueConfig(partition="debug", time_limit="00:10:00", cpus=2, mem="1G"),
    )
    ComputeResource(mode="slurm", slurm=slurm, default_launcher=BashLauncher(), auto_detect_platform=True)  # fmt: skip
    ComputeResource(
        mode="slurm-session",
        slurm=slurm,
        session=SessionResource(enabled=True, num_nodes=1, time_limit="00:10:00"),
        pre_deployed_env_path="/x/envs/abc",
    )
    resources = slurm.queue.job_resources({"cpus_per_task": 4, "memory_gb": 8, "gpus_per_node": 1})
    assert resources.options() == [
        "--partition=debug",
        "--nodes=1",
        "--cpus-per-task=4",
        "--mem=8G",
        "--gres=gpu:1",
        "--time=00:10:00",
    ]
    with pytest.raises(Exception, match="unknown Slurm option"):
        slurm.queue.job_resources({"walltime": "1:00:00"})


def test_launchers_become_the_core_launchers() -> None:
    from pixi_deploy.dagster import RayLauncher
    from pixi_deploy.launchers import BashLauncher as CoreBash
    from pixi_deploy.launchers import RayLauncher as CoreRay

    assert isinstance(BashLauncher().to_core(), CoreBash)
    ray = RayLauncher(object_store_memory_gb=2, num_gpus_per_node=1, ray_start_args=["--x=1"])
    core = ray.to_core()
    assert isinstance(core, CoreRay)
    assert core.object_store_memory == 2 * 10**9  # dagster-slurm counts GB in 10**9 bytes
    assert core.extra_start_args == ("--x=1", "--num-gpus=1")
    assert core.dashboard_host == "127.0.0.1"
    with pytest.raises(Exception, match="ray_address"):
        RayLauncher(ray_address="10.0.0.1:6379").to_core()
    # the docs' session snippet with a Ray default launcher constructs as written
    ComputeResource(
        mode="slurm-session",
        slurm=SlurmResource(ssh=SSHConnectionResource(host="h", user="u", password="pw")),
        session=SessionResource(enabled=True, num_nodes=2, time_limit="01:00:00"),
        default_launcher=RayLauncher(),
        pre_deployed_env_path="/x/envs/abc",
    )
