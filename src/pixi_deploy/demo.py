"""`pixi-deploy demo`: the whole pipeline on an embedded example, with no network and no cluster.

It builds the bundled example channel (real conda packages) and workspace (a real pixi.lock) in a
temporary folder, then does what a user would: inspect, pack, deploy to a local store, deploy
again (reused), and run a command inside the environment.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from pixi_deploy.pack import DownloadCache, unpack, write_pack
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.store import LocalStore
from pixi_deploy.testing.channel import make_demo_workspace
from pixi_deploy.workspace import current_platform, load_workspace


def run_demo(reporter: Reporter | None = None, keep: Path | None = None) -> dict[str, Any]:
    """Returns a summary (paths, hashes, the command's output and exit code)."""
    reporter = reporter or NullReporter()
    with tempfile.TemporaryDirectory(prefix="pixi-deploy-demo-") as tmp:
        root = keep or Path(tmp)
        return _demo(root, reporter)


def _demo(root: Path, reporter: Reporter) -> dict[str, Any]:
    platform = current_platform()
    started = time.perf_counter()
    reporter.step(f"1/6 building the example channel and workspace in {root}")
    workspace_dir = make_demo_workspace(root / "example")
    workspace = load_workspace(workspace_dir)
    resolved = workspace.resolve("default", platform)
    reporter.step(
        f"2/6 read {workspace.lock_path.name}: environment '{resolved.name}' on {platform} has "
        f"{len(resolved.conda_records)} conda packages, lock hash {resolved.short_hash}"
    )
    cache = DownloadCache(root / "cache")
    packed = write_pack(resolved, root / "demo.tar", cache=cache)
    reporter.step(f"3/6 packed it into {packed.path.name} ({packed.size} bytes), checksummed")
    unpacked = unpack(packed.path, root / "unpacked")
    reporter.step(f"4/6 unpacked the pack offline into {unpacked.prefix}")
    store = LocalStore(root / "store", cache)
    first = store.deploy(resolved)
    again = store.deploy(resolved)
    reporter.step(
        f"5/6 deployed to the local store at {first.deployment_path}; "
        f"a second deploy {'reused it' if again.reused else 'rebuilt it (unexpected)'}"
    )
    metadata_file = first.write(root / "deployment_metadata.json")
    command = ["greet"]
    activate = Path(first.deployment_path) / "activate.sh"
    completed = subprocess.run(
        ["/bin/sh", "-c", '. "$0" && exec "$@"', str(activate), *command],
        capture_output=True,
        text=True,
        check=False,
    )
    reporter.step(
        f"6/6 ran `{' '.join(command)}` in the deployed environment (exit {completed.returncode}):"
    )
    for line in completed.stdout.splitlines():
        reporter.step(f"    {line}")
    reporter.step(f"done in {time.perf_counter() - started:.1f} s")
    return {
        "workspace": str(workspace_dir),
        "platform": platform,
        "lock_hash": resolved.lock_hash,
        "pack": str(packed.path),
        "pack_size": packed.size,
        "deployment_path": first.deployment_path,
        "reused_on_second_deploy": again.reused,
        "metadata_file": str(metadata_file),
        "command": command,
        "stdout": completed.stdout,
        "exit_code": completed.returncode,
    }
