"""Deployment environments and execution modes, with dagster-slurm's names and values.

``Environment`` is what dagster-slurm's example reads from ``DAGSTER_DEPLOYMENT`` to pick a
configuration; pixi-deploy itself never reads it. ``ExecutionMode`` values are the strings
``ComputeResource(mode=...)`` accepts.
"""

from __future__ import annotations

from enum import StrEnum


class Environment(StrEnum):
    """Deployment stages of a Dagster code location (dagster-slurm's example uses them)."""

    DEVELOPMENT = "development"
    STAGING_DOCKER = "staging_docker"
    STAGING_SUPERCOMPUTER = "staging_supercomputer"
    STAGING_DOCKER_SESSION = "staging_docker_session"
    STAGING_DOCKER_SESSION_CLUSTER_REUSE = "staging_docker_session_cluster_reuse"
    STAGING_DOCKER_HETJOB = "staging_docker_hetjob"
    PRODUCTION_DOCKER = "production_docker"
    PRODUCTION_DOCKER_SESSION = "production_docker_session"
    PRODUCTION_DOCKER_SESSION_CLUSTER_REUSE = "production_docker_session_cluster_reuse"
    PRODUCTION_DOCKER_HETJOB = "production_docker_hetjob"
    PRODUCTION_SUPERCOMPUTER = "production_supercomputer"
    PRODUCTION_SUPERCOMPUTER_SESSION = "production_supercomputer_session"
    PRODUCTION_SUPERCOMPUTER_SESSION_CLUSTER_REUSE = (
        "production_supercomputer_session_cluster_reuse"
    )
    PRODUCTION_SUPERCOMPUTER_HETJOB = "production_supercomputer_hetjob"


class ExecutionMode(StrEnum):
    """Where payloads run; members compare equal to their strings."""

    LOCAL = "local"
    SLURM = "slurm"
    SLURM_SESSION = "slurm-session"
    SLURM_HETJOB = "slurm-hetjob"


MODES = tuple(m.value for m in ExecutionMode)
