"""Materialize the example's assets once and print what came back.

    python -m examples.dagster_project.run --mode local
    python -m examples.dagster_project.run --mode slurm --demo-workspace
    python -m examples.dagster_project.run --mode slurm-session --demo-workspace --pre-deploy

``--demo-workspace`` deploys an offline-built environment (see demo_workspace.py) instead of
this folder's pixi.toml; ``--pre-deploy`` deploys first and hands the path to the resource as
``pre_deployed_env_path``, as a CI job would (``pixi-deploy deploy --target ssh``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import dagster as dg

from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import get_transport
from pixi_deploy.workspace import load_workspace

from .definitions import ASSETS, HERE, make_compute


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["local", "slurm", "slurm-session"], default="local")
    parser.add_argument("--demo-workspace", action="store_true", help="offline environment")
    parser.add_argument("--pre-deploy", action="store_true", help="deploy before the run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dagster-example-") as tmp:
        manifest = Path(os.environ.get("PIXI_DEPLOY_DAGSTER_MANIFEST", HERE))
        if args.demo_workspace:
            from .demo_workspace import make_demo_workspace

            manifest = make_demo_workspace(Path(tmp))
        os.environ["PIXI_DEPLOY_DAGSTER_MANIFEST"] = str(manifest)
        if args.pre_deploy:
            store = RemoteStore(get_transport())
            path = store.deploy(load_workspace(manifest)).deployment_path
            os.environ["PIXI_DEPLOY_DAGSTER_ENV_PATH"] = path
            print(f"pre-deployed environment: {path}")
        result = dg.materialize(ASSETS, resources={"compute": make_compute(args.mode)})
    report = {
        "success": result.success,
        "assets": {
            node: {
                k: v.value
                for k, v in result.asset_materializations_for_node(node)[0].metadata.items()
            }
            for node in ("raw_numbers", "summary")
        },
        "checks": {c.check_name: c.passed for c in result.get_asset_check_evaluations()},
    }
    print(json.dumps(report, indent=2, default=str))
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
