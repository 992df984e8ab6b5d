"""Workspaces whose lock needs more of the target than the test machines have."""

from __future__ import annotations

from pathlib import Path

from pixi_deploy.workspace import load_workspace


def require(workspace: Path, need: str) -> Path:
    """Make the locked linux-64 `greet` package of a demo workspace depend on the virtual
    package ``need`` (e.g. ``__glibc >=99``, ``__cuda >=12``)."""
    lock = workspace / "pixi.lock"
    text = lock.read_text()
    record = text.index("/linux-64/greet-1.0.0-h0_0.conda\n  subdir")
    at = text.index("  - libgreet >=1.2\n", record)
    lock.write_text(text[:at] + f"  - {need}\n" + text[at:])
    assert need in load_workspace(workspace).resolve("default", "linux-64").virtual_packages
    return workspace
