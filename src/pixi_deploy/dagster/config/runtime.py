"""SlurmRunConfig: per-run settings a user can change in the Dagster launchpad.

An asset takes ``config: SlurmRunConfig`` and passes it on with ``compute.run(...,
config=config)``; explicit ``run()`` arguments win over it, it wins over asset metadata and
the resource's defaults (dagster-slurm's precedence).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from pixi_deploy.dagster.strict import StrictConfig


class RuntimeVariant(StrEnum):
    """What kind of program a launcher starts (dagster-slurm's names)."""

    SHELL = "shell_script"
    RAY = "ray"
    SPARK = "spark"


class SlurmRunConfig(StrictConfig):
    """Launchpad-configurable options of one run of an asset on the cluster."""

    force_env_push: bool = Field(
        default=False,
        description="Deploy the environment again even if it is on the cluster (refused: "
        "pixi-deploy environments are content-addressed, see the README)",
    )
    skip_payload_upload: bool = Field(
        default=False,
        description="Do not upload the payload: run the copy already on the cluster "
        "(remote_payload_path, or <pre_deployed_env_path>/scripts/<name>)",
    )
    remote_payload_path: str | None = Field(
        default=None, description="The payload on the cluster when skip_payload_upload"
    )
