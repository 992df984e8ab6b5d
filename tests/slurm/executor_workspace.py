"""Test workspaces for the Executor: a conda ``python`` wrapping Debian's /usr/bin/python3 (the
cluster user cannot enter /root, where this process's interpreter lives), plus cloudpickle from
PyPI as a wheel in pixi.lock, the same version as the one installed here (pickles travel
between the two). Without cloudpickle for the missing-package test."""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from helpers.wheels import DEBIAN_PYTHON, WHEELS, pip_download, python_version
from pixi_deploy.testing.channel import build_channel, lock_workspace
from pixi_deploy.testing.python_pkg import add_pypi_to_lock, python_wrapper_spec

INTERPRETER = DEBIAN_PYTHON
CLOUDPICKLE = importlib.metadata.version("cloudpickle")


def cloudpickle_wheel(dest: Path = WHEELS) -> Path:
    """The cloudpickle wheel of the version installed here (pip download; cached)."""
    found = sorted(dest.glob(f"cloudpickle-{CLOUDPICKLE}-*.whl"))
    if not found:
        pip_download([f"cloudpickle=={CLOUDPICKLE}"], ["--no-deps"], dest)
        found = sorted(dest.glob(f"cloudpickle-{CLOUDPICKLE}-*.whl"))
    return found[0]


def make_executor_workspace(dest: Path, *, with_cloudpickle: bool = True) -> Path:
    """A locked workspace ``dest/workspace`` (linux-64) with python (+ cloudpickle)."""
    version = python_version(INTERPRETER)
    channel = build_channel(
        dest / "channel", [python_wrapper_spec("linux-64", version, interpreter=INTERPRETER)]
    )
    workspace = dest / "workspace"
    lock_workspace(workspace, channel, {"default": ["python"]}, ["linux-64"], name="functions")
    if with_cloudpickle:
        wheel = cloudpickle_wheel()
        location = wheel.resolve().as_uri()
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        add_pypi_to_lock(
            workspace, [("cloudpickle", CLOUDPICKLE, location)], sha256={location: digest}
        )
    return workspace
