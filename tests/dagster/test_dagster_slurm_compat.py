"""dagster-slurm's names, modules and fields: every documented field of every resource is either
honoured (its effect is visible in what pixi-deploy builds) or refused at construction with the
reason; nothing is silently dropped. No cluster needed (the cluster tests run the same
resources for real)."""

import importlib
from pathlib import Path

import dagster as dg
import pytest

import pixi_deploy.dagster as pd
from pixi_deploy.dagster import (
    BashLauncher,
    ComputeResource,
    RayLauncher,
    SlurmAllocationScope,
    SlurmQueueConfig,
    SlurmResource,
    SlurmRunAllocationConfig,
    SlurmRunConfig,
    SlurmSessionResource,
    SparkLauncher,
    SSHConnectionResource,
)
from pixi_deploy.dagster.auth.step_oidc import StepOIDCAuthProvider
from pixi_deploy.dagster.config.environment import Environment, ExecutionMode
from pixi_deploy.errors import ConfigError
from pixi_deploy.launchers import RayLauncher as CoreRay
from pixi_deploy.transport import CertificateCommandProvider

PAYLOADS = Path(__file__).parent / "payloads"


@pytest.fixture
def key(tmp_path: Path) -> str:
    path = tmp_path / "id_ed25519"
    path.write_text("not a real key\n")
    return str(path)


def _ssh(key: str, **fields) -> SSHConnectionResource:
    return SSHConnectionResource(host="login.example.org", user="me", key_path=key, **fields)


def test_the_import_paths_dagster_slurm_code_uses() -> None:
    for name in [
        "ComputeResource",
        "SlurmRunConfig",
        "SlurmResource",
        "SlurmQueueConfig",
        "SSHConnectionResource",
        "SlurmSessionResource",
        "SlurmAllocationScope",
        "SlurmRunAllocationConfig",
        "BashLauncher",
        "RayLauncher",
        "ComputeLauncher",
        "SparkLauncher",
    ]:
        assert hasattr(pd, name), name
    for module, names in {
        "pixi_deploy.dagster.config.environment": ["Environment", "ExecutionMode"],
        "pixi_deploy.dagster.config.runtime": ["SlurmRunConfig", "RuntimeVariant"],
        "pixi_deploy.dagster.auth": ["AuthProvider", "StepOIDCAuthProvider"],
        "pixi_deploy.dagster.auth.base": ["AuthProvider"],
        "pixi_deploy.dagster.auth.step_oidc": ["StepOIDCAuthProvider"],
        "pixi_deploy.dagster.resources": ["SlurmSessionResource", "SlurmAllocationScope"],
    }.items():
        loaded = importlib.import_module(module)
        assert all(hasattr(loaded, n) for n in names), module
    for name in ["SlurmAllocation", "LocalPipesClient", "SlurmPipesClient"]:
        with pytest.raises(ConfigError, match=f"{name} is not part of pixi-deploy"):
            getattr(pd, name)()
    for name in ["build_slurm_orphan_reconcile_sensor", "reconcile_orphaned_slurm_runs"]:
        with pytest.raises(ConfigError, match=f"{name} is not part of pixi-deploy"):
            getattr(pd, name)()
    assert ExecutionMode.SLURM_HETJOB == "slurm-hetjob"
    assert Environment("staging_docker_session") is Environment.STAGING_DOCKER_SESSION
    assert SlurmAllocationScope.RUN == "run" and SlurmAllocationScope("asset").name == "ASSET"


def test_ssh_connection_resource_every_field(key: str, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    jump = SSHConnectionResource(
        host="bastion.example.org",
        port=2200,
        user="hop",
        password="pw",
        known_hosts_file=str(known),
    )
    ssh = _ssh(
        key,
        port=2222,
        force_tty=True,
        post_login_command="module load slurm",
        jump_host=jump,
        host_key_checking="accept-new",
        known_hosts_file=str(known),
    )
    s = ssh.to_settings()
    assert (s.host, s.port, s.user, str(s.key_path)) == ("login.example.org", 2222, "me", key)
    assert s.force_tty and s.post_login_command == "module load slurm"
    assert s.accept_new_host_key and s.check_host_keys and s.known_hosts == known
    assert s.jump is not None and (s.jump.host, s.jump.port, s.jump.user) == (
        "bastion.example.org",
        2200,
        "hop",
    )
    assert s.jump.password is not None and "pw" not in repr(s.jump)
    as_dict = _ssh(key, jump_host={"host": "bastion", "user": "hop", "password": "pw"})
    assert as_dict.to_settings().jump.host == "bastion"  # type: ignore[union-attr]  # the example's form
    assert not _ssh(key, host_key_checking="off").to_settings().check_host_keys
    strict = _ssh(key).to_settings()
    assert strict.check_host_keys and not strict.accept_new_host_key  # the default
    with pytest.raises(Exception, match="extra_opts is not supported by pixi-deploy"):
        _ssh(key, extra_opts=["-o", "Compression=yes"])
    with pytest.raises(Exception, match="host_key_checking"):
        _ssh(key, host_key_checking="maybe")
    with pytest.raises(Exception, match="has no setting batch_mode"):
        _ssh(key, batch_mode=True)  # a later dagster-slurm field: refused, never dropped
    with pytest.raises(Exception, match="has no setting jump_hots"):
        _ssh(key, jump_hots=jump)  # a typo is not silently dropped either


def test_queue_config_defaults_none_and_every_field() -> None:
    default = SlurmQueueConfig()
    assert (default.cpus, default.mem, default.time_limit, default.num_nodes) == (
        2,
        "4096M",
        "00:30:00",
        1,
    )
    assert default.job_resources().options() == [
        "--nodes=1",
        "--cpus-per-task=2",
        "--mem=4096M",
        "--time=00:30:00",
    ]
    queue = SlurmQueueConfig(
        partition="gpu",
        num_nodes=2,
        time_limit="02:00:00",
        signal_before_timeout="usr1@300",
        cpus=8,
        gpus_per_node=4,
        mem=None,
        mem_per_cpu="2G",
        qos="normal",
        reservation="hack",
        account="proj1",
        constraint="a100",
        extra_sbatch=["--exclusive"],
    )
    assert queue.job_resources().options() == [
        "--partition=gpu",
        "--nodes=2",
        "--cpus-per-task=8",
        "--gres=gpu:4",  # GPUs per node, not --gpus=4 per job
        "--time=02:00:00",
        "--account=proj1",
        "--qos=normal",
        "--reservation=hack",
        "--constraint=a100",
        "--signal=B:USR1@300",
        "--exclusive",
        "--mem-per-cpu=2G",
    ]
    nones = SlurmQueueConfig(mem=None, qos=None, account=None, reservation=None)
    assert nones.job_resources().options() == ["--nodes=1", "--cpus-per-task=2", "--time=00:30:00"]
    with pytest.raises(Exception, match="must be shorter than time_limit"):
        SlurmQueueConfig(time_limit="00:02:00", signal_before_timeout="TERM@120")
    with pytest.raises(Exception, match="SIGNAL@SECONDS"):
        SlurmQueueConfig(signal_before_timeout="TERM")
    over = SlurmQueueConfig().job_resources({"nodes": 3, "gpus_per_node": 1, "mem": "8G"})
    assert "--nodes=3" in over.options() and "--gres=gpu:1" in over.options()


def test_slurm_resource_fields_env_and_refusals(key: str, monkeypatch) -> None:
    provider = CertificateCommandProvider(cert_path=key, command=["true"])
    slurm = SlurmResource(
        ssh=_ssh(key), queue=SlurmQueueConfig(cpus=1), remote_base="$HOME/dagster_runs"
    )
    assert slurm.set_auth_provider(provider) is slurm
    assert slurm.ssh.to_settings(auth_provider=provider).auth_provider is provider
    with pytest.raises(Exception, match="status_poll_interval is not supported by pixi-deploy"):
        SlurmResource(ssh=_ssh(key), status_poll_interval=5)
    with pytest.raises(ConfigError, match="ensure"):
        slurm.set_auth_provider(object())  # type: ignore[arg-type]
    for name in list(__import__("os").environ):
        if name.startswith(("SLURM_", "CI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SLURM_SSH_HOST", "login.example.org")
    monkeypatch.setenv("SLURM_SSH_USER", "me")
    monkeypatch.setenv("SLURM_SSH_KEY", key)
    monkeypatch.setenv("SLURM_SSH_KNOWN_HOSTS_FILE", "/etc/ssh/known")
    monkeypatch.setenv("SLURM_SSH_HOST_KEY_CHECKING", "accept-new")
    monkeypatch.setenv("SLURM_SSH_JUMP_HOST", "bastion")
    monkeypatch.setenv("SLURM_SSH_JUMP_USER", "hop")
    monkeypatch.setenv("SLURM_SSH_JUMP_PASSWORD", "pw")
    monkeypatch.setenv("SLURM_MEM", "")  # an empty value clears the default
    from_env = SlurmResource.from_env()
    ssh = from_env.ssh
    assert (ssh.host, ssh.user, ssh.key_path, ssh.known_hosts_file) == (
        "login.example.org",
        "me",
        key,
        "/etc/ssh/known",
    )
    assert ssh.host_key_checking == "accept-new"
    assert ssh.jump_host is not None and ssh.jump_host.user == "hop"
    assert from_env.queue.mem is None and from_env.queue.time_limit == "00:10:00"
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "other.example.org")
    with pytest.raises(ConfigError, match="SLURM_EDGE_NODE_HOST and SLURM_SSH_HOST disagree"):
        SSHConnectionResource.from_env()
    only = SSHConnectionResource.from_env(prefix="SLURM_EDGE_NODE_")
    assert only.host == "other.example.org" and only.key_path is None
    monkeypatch.setenv("SLURM_EDGE_NODE_HOST", "login.example.org")
    monkeypatch.setenv("SLURM_EDGE_NODE_KNOWN_HOSTS", "/etc/ssh/known")  # both spellings agree
    assert SSHConnectionResource.from_env().known_hosts_file == "/etc/ssh/known"
    explicit = SlurmResource.from_env_slurm(ssh)
    assert (explicit.queue.partition, explicit.queue.cpus, explicit.queue.mem) == (
        "interactive",
        2,
        None,
    )


def test_session_resource_every_field_reaches_the_allocation(key: str) -> None:
    slurm = SlurmResource(ssh=_ssh(key), queue=SlurmQueueConfig(gpus_per_node=2, account="q"))
    session = SlurmSessionResource(
        slurm=slurm,
        num_nodes=3,
        time_limit="05:00:00",
        partition="big",
        max_concurrent_jobs=7,
        enable_health_checks=True,
        enable_session=True,
        gpus_per_node=0,  # explicitly no GPUs although the queue has some
        cpus_per_task=4,
        mem="64G",
        mem_per_cpu=None,
        qos="long",
        account="proj2",
        reservation="r1",
        constraint="skylake",
    )
    from pixi_deploy.dagster.resources import allocation_resources

    options = allocation_resources(slurm, session.overrides()).options()
    assert options == [
        "--partition=big",
        "--nodes=3",
        "--cpus-per-task=4",
        "--mem=64G",
        "--time=05:00:00",
        "--account=proj2",
        "--qos=long",
        "--reservation=r1",
        "--constraint=skylake",
    ]
    inherited = allocation_resources(slurm, SlurmSessionResource(slurm=slurm).overrides())
    assert "--gres=gpu:2" in inherited.options() and "--account=q" in inherited.options()
    defaults = SlurmSessionResource()
    assert (defaults.num_nodes, defaults.time_limit, defaults.max_concurrent_jobs) == (
        2,
        "04:00:00",
        10,
    )
    assert not SlurmSessionResource(enable_session=False).active


def test_run_allocation_config_every_field(key: str) -> None:
    config = SlurmRunAllocationConfig(
        num_nodes=2,
        gpus_per_node=1,
        cpus_per_task=8,
        mem="64G",
        mem_per_cpu=None,
        time_limit="04:00:00",
        partition="gpu",
        qos="q",
        account="a",
        reservation="r",
        constraint="c",
        cleanup_policy="after_run",
    )
    from pixi_deploy.dagster.resources import allocation_resources

    slurm = SlurmResource(ssh=_ssh(key))
    options = allocation_resources(slurm, config.overrides()).options()
    assert "--nodes=2" in options and "--gres=gpu:1" in options and "--mem=64G" in options
    with pytest.raises(Exception, match="cleanup_policy"):
        SlurmRunAllocationConfig(cleanup_policy="never")
    with pytest.raises(Exception, match="has no setting nodelist"):
        SlurmRunAllocationConfig(nodelist="gpu-[01-02]")
    compute = ComputeResource(
        mode="slurm",
        slurm=slurm,
        allocation_scope=SlurmAllocationScope.RUN,
        run_allocation=config,
    )
    assert compute.allocation_scope == "run"
    with pytest.raises(Exception, match="allocation_scope='run' needs mode='slurm'"):
        ComputeResource(mode="local", allocation_scope="run")
    with pytest.raises(Exception, match="only used with allocation_scope='run'"):
        ComputeResource(mode="slurm", slurm=slurm, run_allocation=config)


def test_compute_resource_every_field(key: str) -> None:
    slurm = SlurmResource(ssh=_ssh(key))
    session = SlurmSessionResource(slurm=slurm, num_nodes=1)
    compute = ComputeResource(
        mode=ExecutionMode.SLURM_SESSION,
        slurm=slurm,
        session=session,
        default_launcher=RayLauncher(num_gpus_per_node=1),
        debug_mode=True,
        cleanup_on_failure=False,
        auto_detect_platform=False,
        pack_platform="linux-aarch64",
        pre_deployed_env_path="/scratch/envs/abc",
        cache_inject_globs=["dist/*.whl"],
        default_skip_payload_upload=True,
        enable_cluster_reuse=False,
        cluster_reuse_tolerance=0.3,
        pack_on_remote=False,
        remote_pack_timeout=120,
        allocation_scope=SlurmAllocationScope.ASSET,
        run_allocation=None,
        default_environment_name="cluster",
        default_extra_files=[str(PAYLOADS / "report.py")],
        project_setup_cmd=None,
    )
    assert compute.mode == "slurm-session" and compute._platform() == "linux-aarch64"
    refusals = {
        "enable_cluster_reuse": (True, "a Ray or Spark cluster is not kept between assets"),
        "pack_on_remote": (True, "pixi-deploy fetches the packages here"),
        "project_setup_cmd": (["bash", "setup.sh"], "there is no setup step"),
    }
    for field, (value, reason) in refusals.items():
        with pytest.raises(Exception, match=f"{field} is not supported by pixi-deploy: {reason}"):
            ComputeResource(mode="slurm-session", slurm=slurm, session=session, **{field: value})
    with pytest.raises(Exception, match="mode must be one of"):
        ComputeResource(mode="cloud")
    with pytest.raises(Exception, match="needs slurm"):
        ComputeResource(mode="slurm-hetjob")
    ComputeResource(mode="slurm-hetjob", slurm=slurm)


def test_launchers_every_field() -> None:
    ray = RayLauncher(
        num_gpus_per_node=2,
        dashboard_port=8300,
        object_store_memory_gb=3,
        ray_start_args=['--resources={"x": 1}'],
        ray_port=6400,
        grace_period=5,
        head_startup_timeout=60,
        worker_startup_delay=1,
        pre_start_commands=["ulimit -n 65536"],
        worker_cpu_bind="none",
        use_head_ip=True,
        dashboard_host="0.0.0.0",
        port_strategy="fixed",
        include_dashboard=True,
        activate_sh="/ignored",
    )
    wrapped = ray.to_core()
    core = wrapped.inner
    assert isinstance(core, CoreRay) and wrapped.commands == ("ulimit -n 65536",)
    assert core.head_port == 6400 and core.wait_timeout == 60
    assert core.object_store_memory == 3 * 10**9 and core.dashboard_host == "0.0.0.0"
    assert core.extra_start_args[-2:] == ("--num-gpus=2", "--dashboard-port=8300")
    assert "ulimit -n 65536" in wrapped.render(__import__("pixi_deploy.slurm").slurm.JobSpec(command=["python", "x.py"]))  # fmt: skip
    free = RayLauncher().to_core()
    assert free.head_port is None and free.wait_timeout == 120 and not free.include_dashboard
    for field, value in {
        "ray_address": "10.0.0.1:6379",
        "redis_password": "x",
        "grace_period": 30,
        "worker_startup_delay": 5,
        "worker_cpu_bind": "cores",
        "use_head_ip": False,
    }.items():
        with pytest.raises(Exception, match=f"RayLauncher.{field} is not supported"):
            RayLauncher(**{field: value})
    spark = SparkLauncher(
        spark_home="/opt/spark",
        master_url=None,
        executor_memory="16g",
        executor_cores=4,
        driver_memory="8g",
        num_executors=2,
        activate_sh=None,
    )
    with pytest.raises(ConfigError, match="SparkLauncher is not supported by pixi-deploy yet"):
        spark.to_core()
    BashLauncher(activate_sh="/x/activate.sh").to_core()


def test_a_launcher_override_keeps_the_defaults_it_does_not_set() -> None:
    from pixi_deploy.dagster.launchers import merge_launcher

    default = RayLauncher(pre_start_commands=["ulimit -n 4096"], head_startup_timeout=300)
    merged = merge_launcher(default, RayLauncher(num_gpus_per_node=2))
    assert isinstance(merged, RayLauncher)
    assert merged.pre_start_commands == ["ulimit -n 4096"] and merged.num_gpus_per_node == 2
    assert merge_launcher(default, BashLauncher()) == BashLauncher()


def test_step_oidc_provider_fields_and_refusal_to_put_a_token_on_a_command_line(tmp_path) -> None:
    provider = StepOIDCAuthProvider(
        token_url="https://auth.example.org/token/",
        client_id="cid",
        username="me",
        app_password="secret",
        scope="profile",
        token_field="access_token",
        context="asc",
        refresh_skew_minutes=30,
        cert_path=str(tmp_path / "missing-cert.pub"),
        ssh_key_path=str(tmp_path / "id"),
        step_binary="step",
        extra_step_args=[],
        bootstrap_ca_url="https://ca.example.org",
        bootstrap_fingerprint="abc",
        authentik_api_base=None,
        authentik_api_token=None,
        authentik_token_identifier="dagster-slurm",
        authentik_token_expires_days=30,
        authentik_credentials_file=None,
        authentik_refresh_skew_days=7,
    )
    assert "secret" not in repr(provider)
    with pytest.raises(ConfigError, match="no Step SSH certificate was found") as raised:
        provider.ensure()
    assert "command line" in str(raised.value) and "secret" not in str(raised.value)


def test_slurm_run_config_fields() -> None:
    config = SlurmRunConfig(
        force_env_push=False, skip_payload_upload=True, remote_payload_path="/p"
    )
    assert config.skip_payload_upload and config.remote_payload_path == "/p"
    with pytest.raises(Exception, match="has no setting pack_cmd"):
        SlurmRunConfig(pack_cmd=["pixi"])


# -- run() arguments and asset checks, in mode local --------------------------------------------


def _run_asset(**run_kwargs) -> dg.AssetsDefinition:
    @dg.asset(name="numbers", check_specs=[dg.AssetCheckSpec("positive", asset="numbers")])
    def numbers(
        context: dg.AssetExecutionContext, compute: ComputeResource, config: SlurmRunConfig
    ):
        return compute.run(
            context=context,
            payload_path=str(PAYLOADS / "report.py"),
            config=config,
            extras={"n": 5},
            **run_kwargs,
        ).get_results()

    return numbers


def _failure(result) -> str:
    (failure,) = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    return failure.step_failure_data.error.to_string()


def test_run_takes_a_launchpad_config_and_dagster_slurm_arguments() -> None:
    result = dg.materialize(
        [_run_asset(launcher=BashLauncher(), extra_slurm_opts={"mem": "1G"}, force_env_push=None)],
        resources={"compute": ComputeResource(mode="local")},
        run_config={"ops": {"numbers": {"config": {"skip_payload_upload": False}}}},
    )
    assert result.success
    assert result.asset_materializations_for_node("numbers")[0].metadata["rows"].value == 5


@pytest.mark.parametrize(
    ("run_kwargs", "run_config", "needle"),
    [
        ({"metrics_collector": object()}, {}, "metrics_collector=...) is not supported"),
        ({"slurm_metrics": True}, {}, "slurm_metrics=...) is not supported"),
        ({"frobnicate": 1}, {}, "unknown argument(s) frobnicate"),
        ({}, {"force_env_push": True}, "force_env_push is not supported by pixi-deploy"),
        ({"force_env_push": True}, {}, "environments are content-addressed"),
        ({}, {"skip_payload_upload": True}, "skip_payload_upload needs the payload's path"),
    ],
)
def test_run_refuses_what_it_cannot_do(run_kwargs, run_config, needle) -> None:
    result = dg.materialize(
        [_run_asset(**run_kwargs)],
        resources={"compute": ComputeResource(mode="local")},
        run_config={"ops": {"numbers": {"config": run_config}}},
        raise_on_error=False,
    )
    assert not result.success
    assert needle in _failure(result)


def test_spark_launcher_fails_when_a_run_would_use_it() -> None:
    result = dg.materialize(
        [_run_asset()],
        resources={"compute": ComputeResource(mode="local", default_launcher=SparkLauncher())},
        raise_on_error=False,
    )
    assert "SparkLauncher is not supported by pixi-deploy yet" in _failure(result)


def test_asset_check_runs_a_payload_through_its_op_context() -> None:
    @dg.asset(name="numbers")
    def numbers() -> int:
        return 1

    @dg.asset_check(asset=numbers, blocking=True)
    def positive(context: dg.AssetCheckExecutionContext, compute: ComputeResource):
        return compute.run(
            context=context,
            payload_path=str(PAYLOADS / "check.py"),
            extras={"n": 3, "asset": "numbers"},
        ).get_asset_check_result()

    result = dg.materialize(
        [numbers, positive], resources={"compute": ComputeResource(mode="local")}
    )
    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.passed and check.check_name == "positive"


def test_cache_inject_globs_says_it_has_no_effect() -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [_run_asset()],
        resources={"compute": ComputeResource(mode="local", cache_inject_globs=["dist/*.whl"])},
        instance=instance,
    )
    assert result.success
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("cache_inject_globs has no effect" in m for m in logs)
