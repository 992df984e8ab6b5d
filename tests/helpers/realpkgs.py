"""Workspaces made of real conda-forge packages (tests/data/realpkgs, see its SOURCE.txt): the
packages are indexed in a private copy of the channel and locked as they are, record by record,
without a solve (conda-forge patches repodata, so their raw pins would not solve)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from pathlib import Path

import rattler

from pixi_deploy.testing.channel import build_channel
from pixi_deploy.testing.python_pkg import python_wrapper_spec

REALPKGS = Path(__file__).resolve().parents[1] / "data" / "realpkgs"
#: C libraries and the tools that read their own prefix (openssl, krb5-config, xml2-config);
#: .tar.bz2 and .conda; softlink chains; binary and text placeholders.
NATIVE = (
    "_libgcc_mutex", "_openmp_mutex", "libgomp", "libgcc-ng", "libzlib", "ca-certificates",
    "openssl", "libedit", "libnsl", "krb5", "libxml2", "reproc", "reproc-cpp",
)  # fmt: skip
#: noarch: python packages (site-packages remapping), installed with the test python wrapper.
NOARCH_PYTHON = ("idna", "packaging", "pysocks")


def real_workspace(dest: Path, names: Sequence[str] = NATIVE, *, python: str | None = None) -> Path:
    """A workspace at ``dest/workspace`` whose default environment (linux-64) holds the real
    packages ``names``; with ``python`` (an interpreter path), also the test python wrapper
    (its conda package is built here, next to the real ones) so noarch packages can go in."""
    channel = dest / "channel"
    for subdir in ("linux-64", "noarch"):
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        for archive in (REALPKGS / subdir).iterdir():
            shutil.copy2(archive, channel / subdir / archive.name)
    if python is not None:
        build_channel(
            dest / "wrapper", [python_wrapper_spec("linux-64", "3.11", interpreter=python)]
        )
        for archive in (dest / "wrapper" / "linux-64").glob("python-*"):
            shutil.copy2(archive, channel / "linux-64" / archive.name)
    for subdir in ("linux-64", "noarch"):
        asyncio.run(rattler.index.index_fs(channel, target_platform=rattler.Subdir(subdir)))
    url = channel.resolve().as_uri()
    wanted = set(names) | ({"python"} if python is not None else set())
    records = []
    for subdir in ("linux-64", "noarch"):
        repodata = rattler.SparseRepoData(
            rattler.Channel(url), subdir, channel / subdir / "repodata.json"
        )
        for name in sorted(wanted):
            records += repodata.load_records(rattler.PackageName(name))
    found = {r.name.normalized for r in records}
    assert found == wanted, sorted(wanted - found)
    workspace = dest / "workspace"
    workspace.mkdir(parents=True)
    lock = rattler.LockFile([rattler.LockPlatform("linux-64")])
    (platform,) = lock.platforms()
    lock.set_channels("default", [rattler.LockChannel(url)])
    for record in sorted(records, key=lambda r: r.name.normalized):
        lock.add_conda_package("default", platform, record)
    lock.to_path(workspace / "pixi.lock")
    deps = "".join(f'"{n}" = "*"\n' for n in sorted(wanted))
    (workspace / "pixi.toml").write_text(
        '[workspace]\nname = "real"\n'
        f'channels = ["{url}"]\nplatforms = ["linux-64"]\n\n[dependencies]\n{deps}'
    )
    return workspace
