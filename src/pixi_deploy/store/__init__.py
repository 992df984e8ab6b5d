"""Stores: where deployed environments live, content-addressed by their lock hash."""

from pixi_deploy.store.layout import StoreLayout, check_name
from pixi_deploy.store.local import LocalStore, run_in_environment
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata

__all__ = [
    "METADATA_NAME",
    "DeploymentMetadata",
    "LocalStore",
    "StoreLayout",
    "check_name",
    "run_in_environment",
]
