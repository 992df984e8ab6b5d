"""An offline stand-in for this folder's pixi.toml, for clusters without internet (the tests').

conda-forge's python and dagster-pipes cannot be downloaded there, so this builds two small
but real conda packages into a local channel and locks a workspace on it:

- ``python``: pixi-deploy's test wrapper around an interpreter that exists on the cluster
  (``/usr/bin/python3`` by default), with the environment's site-packages on its path;
- ``dagster-pipes``: this machine's installed ``dagster_pipes`` module (pure Python).

The payloads then import dagster_pipes from the deployed environment, as they would with the
conda-forge packages.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import dagster_pipes

from pixi_deploy.testing.channel import PackageSpec, build_channel, lock_workspace
from pixi_deploy.testing.python_pkg import python_wrapper_spec


def make_demo_workspace(dest: Path, interpreter: str = "/usr/bin/python3") -> Path:
    """Build the channel and a locked linux-64 workspace under ``dest``; return the workspace."""
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    source = Path(dagster_pipes.__file__).parent
    site = f"lib/python{version}/site-packages/dagster_pipes"
    pipes = PackageSpec(
        name="dagster-pipes",
        version=importlib.metadata.version("dagster-pipes"),
        depends=["python"],
        files={
            f"{site}/{p.relative_to(source)}": p.read_bytes()
            for p in sorted(source.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts
        },
    )
    specs = [python_wrapper_spec("linux-64", version, interpreter=interpreter), pipes]
    channel = build_channel(dest / "channel", specs)
    workspace = dest / "workspace"
    lock_workspace(
        workspace,
        channel,
        {"default": ["python", "dagster-pipes"]},
        ["linux-64"],
        name="dagster-example",
    )
    return workspace
