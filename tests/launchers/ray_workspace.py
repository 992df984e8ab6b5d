"""A test workspace with Ray from PyPI: a conda ``python`` wrapping this machine's interpreter
plus ray and its dependencies as wheels in pixi.lock (downloaded once into a cache folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from helpers.wheels import WHEELS, pip_download
from pixi_deploy.testing.channel import build_channel, lock_workspace
from pixi_deploy.testing.python_pkg import add_pypi_to_lock, python_wrapper_spec

RAY_VERSION = "2.49.2"
PLATFORM = "manylinux2014_x86_64"
# The test user cannot enter /root (pyenv), so the wrapped interpreter is Debian's python3.11,
# whose version matches the cp311 wheels.
INTERPRETER = "/usr/bin/python3.11"


def download_ray(dest: Path = WHEELS) -> list[Path]:
    """ray and its dependencies as cp311 manylinux wheels (pip download; cached)."""
    marker = dest / f".ray-{RAY_VERSION}-complete"
    if not marker.exists():
        pip_download(
            [f"ray=={RAY_VERSION}"],
            ["--python-version", "3.11", "--implementation", "cp", "--platform", PLATFORM],
            dest,
            timeout=900,
        )
        marker.touch()
    return sorted(dest.glob("*.whl"))


def make_ray_workspace(dest: Path) -> Path:
    """Channel + locked workspace ``dest/workspace`` with python and ray (linux-64)."""
    wheels = download_ray()
    channel = build_channel(
        dest / "channel", [python_wrapper_spec("linux-64", "3.11", interpreter=INTERPRETER)]
    )
    workspace = dest / "workspace"
    lock_workspace(workspace, channel, {"default": ["python"]}, ["linux-64"], name="raydemo")
    packages = []
    digests = {}
    seen = set()
    for wheel in wheels:
        name, version = wheel.name.split("-")[:2]
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        location = wheel.resolve().as_uri()
        packages.append((name.replace("_", "-"), version, location))
        digests[location] = hashlib.sha256(wheel.read_bytes()).hexdigest()
    add_pypi_to_lock(workspace, packages)
    _add_hashes(workspace / "pixi.lock", digests)
    return workspace


def _add_hashes(path: Path, digests: dict[str, str]) -> None:
    """Record each wheel's sha256 under its package entry (rattler's add_pypi_package takes
    none). Matches the entry at the start of a line, not the environment's reference to it."""
    text = path.read_text()
    for location, digest in digests.items():
        start = text.index(f"\n- pypi: {location}\n") + 1
        version_line = text.index("\n", text.index("\n  version:", start) + 1) + 1
        text = text[:version_line] + f"  sha256: {digest}\n" + text[version_line:]
    path.write_text(text)
