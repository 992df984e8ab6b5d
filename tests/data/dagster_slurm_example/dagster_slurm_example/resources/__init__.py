"""Resources per deployment, chosen by DAGSTER_DEPLOYMENT (development / staging_docker / ...)."""

import copy
import os
from typing import Any

import dagster as dg
from dagster_slurm import (
    BashLauncher,
    ComputeResource,
    RayLauncher,
    SlurmQueueConfig,
    SlurmResource,
    SlurmSessionResource,
    SparkLauncher,
    SSHConnectionResource,
)
from dagster_slurm.auth.step_oidc import StepOIDCAuthProvider
from dagster_slurm.config.environment import Environment, ExecutionMode

LAUNCHERS: dict[str, Any] = {
    "bash": {},
    "ray": {"num_gpus_per_node": 0, "dashboard_port": 8265, "head_startup_timeout": 60},
    "spark": {"driver_memory": "2g", "executor_memory": "4g"},
}

DOCKER_SLURM_BASE_CONFIG: dict[str, Any] = {
    "mode": ExecutionMode.SLURM,
    "ssh_config": {
        "host": "localhost",
        "port": 2223,
        "user": dg.EnvVar("SLURM_EDGE_NODE_USER").get_value(default="submitter"),
    },
    "slurm_queue_config": {
        "num_nodes": 1,
        "time_limit": "00:30:00",
        "cpus": 1,
        "gpus_per_node": 0,
        "mem": "500M",
    },
    "slurm_session_config": {"num_nodes": 1, "time_limit": "00:20:00"},
    "compute_config": {
        "auto_detect_platform": True,
        "debug_mode": False,
        "cache_inject_globs": ["../dist/*.whl"],
    },
    "launchers": LAUNCHERS,
}


def step_auth_provider() -> StepOIDCAuthProvider:
    """A site that issues short-lived Step SSH certificates through OIDC."""
    return StepOIDCAuthProvider(
        token_url=os.environ.get("OIDC_TOKEN_URL", "https://auth.example.org/token/"),
        client_id=os.environ.get("OIDC_CLIENT_ID", ""),
        username=os.environ.get("OIDC_USERNAME", ""),
        app_password=os.environ.get("OIDC_APP_PASSWORD"),
        cert_path=os.environ.get("STEP_CERT_PATH"),
        ssh_key_path=os.environ.get("SLURM_EDGE_NODE_KEY_PATH"),
    )


def build_slurm_resources(config: dict[str, Any]) -> dict[str, Any]:
    ssh = SSHConnectionResource(**config["ssh_config"])
    queue = SlurmQueueConfig(**config["slurm_queue_config"])
    slurm = SlurmResource(ssh=ssh, queue=queue, remote_base="$HOME/dagster_runs")
    slurm_cfg = config.get("slurm_config", {})
    if "auth_provider" in slurm_cfg:
        slurm.set_auth_provider(slurm_cfg["auth_provider"])
    session = None
    if "session" in config["mode"].value:
        session = SlurmSessionResource(slurm=slurm, **config["slurm_session_config"])
    return {"slurm": slurm, "session": session}


def build_compute_resources(
    config: dict[str, Any], slurm_resources: dict[str, Any]
) -> dict[str, ComputeResource]:
    launcher_classes = {"bash": BashLauncher, "ray": RayLauncher, "spark": SparkLauncher}
    keys = {"bash": "compute", "ray": "compute_ray", "spark": "compute_spark"}
    return {
        keys[name]: ComputeResource(
            mode=config["mode"],
            default_launcher=cls(**config["launchers"].get(name, {})),
            **slurm_resources,
            **config.get("compute_config", {}),
        )
        for name, cls in launcher_classes.items()
    }


def get_dagster_deployment_environment(key: str = "DAGSTER_DEPLOYMENT") -> Environment:
    value = os.environ.get(key, "development").lower()
    try:
        return Environment(value)
    except ValueError as error:
        valid = [e.value for e in Environment]
        raise ValueError(f"{key}={value!r} is not one of {valid}") from error


def get_resources() -> dict[str, ComputeResource]:
    deployment = get_dagster_deployment_environment()
    if deployment == Environment.DEVELOPMENT:
        return {
            "compute": ComputeResource(mode=ExecutionMode.LOCAL, default_launcher=BashLauncher()),
            "compute_ray": ComputeResource(
                mode=ExecutionMode.LOCAL, default_launcher=RayLauncher(**LAUNCHERS["ray"])
            ),
            "compute_spark": ComputeResource(
                mode=ExecutionMode.LOCAL, default_launcher=SparkLauncher(**LAUNCHERS["spark"])
            ),
        }
    if "_docker" not in deployment.value:
        raise ValueError(f"unexpected deployment {deployment.value}")
    config = copy.deepcopy(DOCKER_SLURM_BASE_CONFIG)
    ssh_cfg = config["ssh_config"]
    ssh_cfg["host"] = os.environ.get("SLURM_EDGE_NODE_HOST", ssh_cfg["host"])
    ssh_cfg["port"] = int(os.environ.get("SLURM_EDGE_NODE_PORT", str(ssh_cfg["port"])))
    ssh_cfg["user"] = os.environ.get("SLURM_EDGE_NODE_USER", ssh_cfg["user"])
    if os.environ.get("SLURM_EDGE_NODE_KEY_PATH"):
        ssh_cfg["key_path"] = os.environ["SLURM_EDGE_NODE_KEY_PATH"]
    elif os.environ.get("SLURM_EDGE_NODE_PASSWORD"):
        ssh_cfg["password"] = os.environ["SLURM_EDGE_NODE_PASSWORD"]
    jump = os.environ.get("SLURM_EDGE_NODE_JUMP_HOST")
    if jump:
        ssh_cfg["jump_host"] = {
            "host": jump,
            "port": int(os.environ.get("SLURM_EDGE_NODE_JUMP_PORT", "22")),
            "user": os.environ.get("SLURM_EDGE_NODE_JUMP_USER", ssh_cfg["user"]),
        }
    if os.environ.get("OIDC_CLIENT_ID"):
        config.setdefault("slurm_config", {})["auth_provider"] = step_auth_provider()
    if deployment.value.startswith("production_"):
        env_path = os.environ.get("CI_DEPLOYED_ENVIRONMENT_PATH")
        if not env_path:
            raise ValueError("production deployments need CI_DEPLOYED_ENVIRONMENT_PATH")
        config["compute_config"]["pre_deployed_env_path"] = env_path
        config["compute_config"]["default_skip_payload_upload"] = True
    if "hetjob" in deployment.value:
        config["mode"] = ExecutionMode.SLURM_HETJOB
    elif "session" in deployment.value:
        config["mode"] = ExecutionMode.SLURM_SESSION
    return build_compute_resources(config, build_slurm_resources(config))
