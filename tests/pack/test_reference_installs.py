"""Every install path agrees with py-rattler's own install of the same lock, file by file:
names, bytes, executable bits, symlink targets and the conda-meta records, for real conda-forge
packages (tests/data/realpkgs) and for conda-forge-shaped synthetic ones (info/ inside payloads,
255-character placeholders, softlinks, hard links). The real binaries that read their own prefix
then print it: `openssl version -d`, `krb5-config --prefix`, `xml2-config --prefix`."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.realpkgs import NATIVE, NOARCH_PYTHON, real_workspace
from helpers.reference import compare_trees, reference_install, same_length_path
from pixi_deploy import api
from pixi_deploy.containers.image import ImageOptions
from pixi_deploy.pack import DownloadCache
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import build_channel, conda_forge_like_specs, lock_workspace
from pixi_deploy.transport import Transport
from pixi_deploy.workspace import ResolvedEnvironment, load_workspace

#: the cluster's user runs the python wrapper of the real workspace: Debian's interpreter
SYSTEM_PYTHON = "/usr/bin/python3.11"


@pytest.fixture(scope="module", params=["real", "conda-forge-like"])
def workspace(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "real":
        return real_workspace(root, NATIVE + NOARCH_PYTHON, python=SYSTEM_PYTHON)
    channel = build_channel(root / "channel", conda_forge_like_specs())
    lock_workspace(root / "workspace", channel, {"default": ["cftool", "cfdata"]}, ["linux-64"])
    return root / "workspace"


def _resolved(workspace: Path) -> ResolvedEnvironment:
    return load_workspace(workspace).resolve("default", "linux-64")


def _agrees(env: Path, workspace: Path, tmp_path: Path, *, made_for: str | None = None) -> None:
    made_for = made_for or str(env)
    short = Path(f"/tmp/pdr-{uuid.uuid4().hex[:8]}")  # the reference's path must be as long
    try:
        reference = same_length_path(short, len(made_for))
        reference_install(list(_resolved(workspace).conda_records), reference, tmp_path / "rc")
        problems = compare_trees(env, reference, our_prefix=made_for)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert problems == [], "\n".join(problems[:30])


def _prints_its_prefix(run: Callable[[str], str], prefix: str, workspace: Path) -> None:
    if workspace.parent.name.startswith("conda-forge-like"):
        assert run("cftool").strip() == f"cftool at {prefix}"
        assert run("cf-config").strip() == prefix
        return
    assert run("openssl version -d").strip() == f'OPENSSLDIR: "{prefix}/ssl"'
    assert run("krb5-config --prefix").strip() == prefix
    assert run("xml2-config --prefix").strip() == prefix


def _local_runner(prefix: Path) -> Callable[[str], str]:
    def run(command: str) -> str:
        done = subprocess.run(
            ["sh", "-c", f'. "$0" && {command}', str(prefix / "activate.sh")],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "zstd"])
def test_unpack(workspace: Path, tmp_path: Path, compress: bool) -> None:
    packed = api.pack(
        manifest_path=workspace, platform="linux-64", output=tmp_path / "p.tar",
        compress=compress, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    env = tmp_path / "e" / "unpacked"
    api.unpack(packed.path, env)
    _agrees(env, workspace, tmp_path)
    _prints_its_prefix(_local_runner(env), str(env), workspace)


def test_local_deploy(workspace: Path, tmp_path: Path) -> None:
    meta = api.deploy(
        manifest_path=workspace, platform="linux-64", base=tmp_path / "store",
        cache_dir=tmp_path / "cache",
    )  # fmt: skip
    env = Path(meta.deployment_path)
    _agrees(env, workspace, tmp_path)
    _prints_its_prefix(_local_runner(env), str(env), workspace)


def test_self_extracting_installer(workspace: Path, tmp_path: Path) -> None:
    installer = api.pack(
        manifest_path=workspace, platform="linux-64", output=tmp_path / "env.sh",
        self_extracting=True, cache_dir=tmp_path / "cache",
    )  # fmt: skip
    env = tmp_path / "e" / "installed"
    done = subprocess.run(
        ["sh", str(installer.path), "--target", str(env)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    _agrees(env, workspace, tmp_path)
    _prints_its_prefix(_local_runner(env), str(env), workspace)


def test_image_layers(workspace: Path, tmp_path: Path) -> None:
    prefix = f"/opt/{uuid.uuid4().hex[:12]}/environment"
    result = api.image(
        ImageOptions(
            tag="ref/test:1", base="scratch", prefix=prefix, dest=tmp_path / "oci",
            cache=DownloadCache(tmp_path / "cache"),
        ),
        manifest_path=workspace,
        platform="linux-64",
    )  # fmt: skip
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    manifest = json.loads(_blob(tmp_path / "oci", result.manifest_digest).read_text())
    for layer in manifest["layers"]:  # applied in order, as a container runtime does
        with tarfile.open(_blob(tmp_path / "oci", layer["digest"])) as tar:
            tar.extractall(rootfs, filter="tar")
    _agrees(rootfs / prefix.lstrip("/"), workspace, tmp_path, made_for=prefix)


def _blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.split(":", 1)[1]


@pytest.mark.cluster
@pytest.mark.parametrize("raw", [True, False], ids=["payloads-unpacked-there", "laid-out-here"])
def test_ssh_deploy_and_a_job_in_it(
    workspace: Path, tmp_path: Path, ssh_settings, test_cluster, raw: bool
) -> None:
    from pixi_deploy.slurm import JobSpec, SlurmClient

    base = f"{test_cluster.base_path}/ref-{uuid.uuid4().hex[:8]}"
    with Transport(ssh_settings) as transport:
        store = RemoteStore(transport, base, raw_payloads=raw)
        meta = store.deploy(
            load_workspace(workspace), "default", "linux-64",
            cache=DownloadCache(tmp_path / "cache"),
        )  # fmt: skip
        assert (store.last_transfer.raw_payloads_sent > 0) == raw
        env = meta.deployment_path
        # the cluster's filesystem is this machine's: compare the tree where it landed
        _agrees(Path(env), workspace, tmp_path)
        client = SlurmClient(transport, base, poll_interval=0.25)

        def in_a_job(command: str) -> str:
            job = client.submit(JobSpec(["sh", "-c", command], environment_path=env))
            result = job.wait()
            assert result.ok, result.message()
            return job.logs()[0]

        _prints_its_prefix(in_a_job, env, workspace)
