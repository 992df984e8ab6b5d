"""A pixi-build workspace: the demo workspace's lock with a ``conda: <path>`` source record, as
pixi (lock format 6) writes one for a package it builds from the workspace itself."""

from __future__ import annotations

from pathlib import Path

SOURCE_RECORD = """\
- conda: {location}
  name: {name}
  version: 0.1.0
  build: h0_0
  subdir: {platform}
  depends:
  - greet
  input:
    hash: 7d3a08cddfbf189d9b37dff7176fa4a608fbb36d2b282cd47ec344f8a1013509
    globs:
    - recipe.yaml
"""


def add_source_package(
    workspace: Path, name: str = "mytool", location: str = "src/mytool", platform: str = "linux-64"
) -> Path:
    """Add the source package to the default environment on ``platform`` (the lock becomes
    format 6, which is what pixi-build workspaces have on disk). Returns the workspace."""
    lock = workspace / "pixi.lock"
    text = lock.read_text()
    header, _, rest = text.partition("environments:\n")
    assert header.startswith("version: 7"), header
    default, marker, others = rest.partition("\n  extra:\n")
    anchor = f"      {platform}:\n"
    assert anchor in default
    default = default.replace(anchor, anchor + f"      - conda: {location}\n", 1)
    envs, _, packages = (default + marker + others).partition("\npackages:\n")
    record = SOURCE_RECORD.format(location=location, name=name, platform=platform)
    lock.write_text(f"version: 6\nenvironments:\n{envs}\npackages:\n{record}{packages}")
    (workspace / location).mkdir(parents=True, exist_ok=True)
    (workspace / location / "recipe.yaml").write_text(f"package: {{name: {name}}}\n")
    return workspace
