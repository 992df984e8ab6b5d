"""Stores: where deployed environments live, content-addressed by their lock hash."""

from typing import Protocol

from pixi_deploy.store.layout import StoreLayout, check_name
from pixi_deploy.store.local import LocalStore, run_in_environment
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata


class Store(Protocol):
    """What every store offers besides deploying (whose inputs differ per target)."""

    def deployments(self) -> list[DeploymentMetadata]: ...

    def names(self) -> dict[str, str]: ...

    def prune(self, keep: int) -> list[str]: ...


__all__ = [
    "METADATA_NAME",
    "DeploymentMetadata",
    "LocalStore",
    "Store",
    "StoreLayout",
    "check_name",
    "run_in_environment",
]
