"""Single-file environments on the real test cluster: deploy a squashfs image over SSH, run a
job and a session step in it through squashfuse, reuse, corrupt images, prune, no FUSE."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pixi_deploy import api
from pixi_deploy.pack import DownloadCache
from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient, SlurmSession
from pixi_deploy.store.metadata import DeploymentMetadata
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import Transport
from pixi_deploy.workspace import load_workspace

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("image_tools")]
SQUASHFUSE = "with squashfuse in a private user and mount namespace"


@pytest.fixture
def image_env(transport: Transport, base: str, demo_ws: Path, tmp_path: Path) -> DeploymentMetadata:
    """The demo environment deployed under this test's base as one squashfs image."""
    store = RemoteStore(transport, base)
    return store.deploy(
        load_workspace(demo_ws), cache=DownloadCache(tmp_path / "cache"), format="squashfs"
    )


def _sh(transport: Transport, script: str, *args: str) -> str:
    return transport.run_script(script, list(args)).stdout


def test_deploy_over_ssh_is_one_image_and_reused(
    ssh_env, base: str, demo_ws: Path, tmp_path: Path, cli, monkeypatch, transport: Transport
) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    args = ("deploy", "--target", "ssh", "--manifest-path", demo_ws, "--format", "squashfs")
    first = cli(*args, "--json")
    assert first.exit_code == 0, first.stderr
    data = json.loads(first.stdout)
    key = load_workspace(demo_ws).resolve("default", "linux-64").short_hash
    assert data["format"] == "squashfs" and data["image"] == f"{base}/images/{key}.sqfs"
    assert data["deployment_path"] == f"{base}/envs/{key}" and data["reused"] is False
    remote_sum = _sh(transport, 'sha256sum < "$1"', data["image"]).split()[0]
    assert data["image_sha256"] == remote_sum
    # the environment is one file; the mountpoint is empty; no package objects were stored
    listing = _sh(transport, 'cd "$1" && find envs images objects -mindepth 1 2>/dev/null', base)
    assert sorted(listing.split()) == [f"envs/{key}", f"images/{key}.json", f"images/{key}.sqfs"]
    stamp = _sh(transport, 'stat -c "%i %Y" "$1"', data["image"])

    second = cli(*args, "--json")
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["reused"] is True
    assert _sh(transport, 'stat -c "%i %Y" "$1"', data["image"]) == stamp
    listed = cli("list", "--target", "ssh", "--json")
    assert listed.exit_code == 0, listed.stderr
    (only,) = json.loads(listed.stdout)["deployments"]
    assert only["format"] == "squashfs" and only["image_sha256"] == remote_sum


def test_job_and_session_step_run_in_the_image(
    client: SlurmClient, image_env: DeploymentMetadata, transport: Transport
) -> None:
    path = image_env.deployment_path
    job = client.submit(
        JobSpec(command=["sh", "-c", 'greet && id -u && ls "$0"', path], environment_path=path)
    )
    result = job.wait(timeout=120)
    assert result.ok, result.message()
    out, err = job.logs()
    assert "hello from greet" in out and "activate.sh" in out
    assert _sh(transport, "id -u").strip() in out.splitlines()  # the job's own uid again
    assert SQUASHFUSE in err and image_env.image in err
    # only inside the job: on the login node the mountpoint stays empty
    assert _sh(transport, 'ls -A "$1"', path) == ""

    with SlurmSession(client, JobResources(cpus_per_task=1, mem="500M")) as session:
        lines: list[str] = []
        step = session.run(
            JobSpec(command=["greet"], environment_path=path, secrets={"S": "x"}),
            on_stdout=lines.append,
        )
        assert step.ok, step.stderr_tail
        assert lines and lines[0].startswith("hello from greet")


def test_python_api_submit_by_environment_path(
    ssh_env, base: str, image_env: DeploymentMetadata, monkeypatch
) -> None:
    monkeypatch.setenv("SLURM_DEPLOYMENT_BASE_PATH", base)
    job = api.submit(["greet"], environment_path=image_env.deployment_path, code=False)
    result = job.wait(timeout=120)
    assert result.ok, result.message()
    assert "hello from greet" in job.logs()[0]


def test_corrupt_image_is_refused_before_mounting(
    client: SlurmClient, image_env: DeploymentMetadata, transport: Transport
) -> None:
    assert image_env.image
    # one flipped byte in the middle: the size is right, the checksum is not
    _sh(
        transport,
        'size=$(wc -c < "$1"); printf X | dd of="$1" bs=1 seek=$((size / 2)) conv=notrunc 2>/dev/null',
        image_env.image,
    )
    job = client.submit(JobSpec(command=["greet"], environment_path=image_env.deployment_path))
    result = job.wait(timeout=120)
    assert (result.state, result.exit_code) == ("FAILED", 97)
    assert "is corrupt or truncated" in result.message() and "deploy it again" in result.message()
    assert "hello" not in job.logs()[0] and SQUASHFUSE not in job.logs()[1]


def test_prune_spares_an_image_a_running_job_has_mounted(
    client: SlurmClient, transport: Transport, base: str, image_env: DeploymentMetadata
) -> None:
    store = RemoteStore(transport, base)
    job = client.submit(
        JobSpec(
            script='echo started; while [ ! -e "$PIXI_DEPLOY_RUN_DIR/go" ]; do sleep 0.2; done; greet',
            environment_path=image_env.deployment_path,
        )
    )
    deadline = time.monotonic() + 120
    while "started" not in job.logs()[0]:  # past the mount: the in-use lock is held
        assert time.monotonic() < deadline, job.status()
        time.sleep(0.2)
    assert store.prune(keep=0) == []
    assert [d.image for d in store.deployments()] == [image_env.image]
    _sh(transport, 'touch "$1/go"', job.run_dir)
    result = job.wait(timeout=120)
    assert result.ok and "hello from greet" in job.logs()[0], result.message()
    assert store.prune(keep=0) == [image_env.deployment_path]  # free once it ended
    assert store.deployments() == []
    left = _sh(transport, 'cd "$1" && find envs images -mindepth 1 2>/dev/null', base)
    assert left == ""


def test_a_node_without_squashfuse_fails_naming_what_is_missing(
    client: SlurmClient, transport: Transport, base: str, image_env: DeploymentMetadata
) -> None:
    # a PATH with every program of the node except squashfuse, apptainer and singularity
    bin_dir = f"{base}/no-fuse-bin"
    _sh(
        transport,
        'mkdir -p "$1"; for f in /usr/bin/* /usr/sbin/*; do case ${f##*/} in '
        'squashfuse*|apptainer|singularity) ;; *) ln -sf "$f" "$1/" ;; esac; done',
        bin_dir,
    )
    job = client.submit(
        JobSpec(
            command=["greet"],
            environment_path=image_env.deployment_path,
            resources=JobResources(extra_sbatch=[f"--export=ALL,PATH={bin_dir}"]),
        )
    )
    result = job.wait(timeout=120)
    assert (result.state, result.exit_code) == ("FAILED", 97)
    message = result.message()
    assert "localhost has no squashfuse and no apptainer or singularity" in message
    assert "to mount the environment image" in message
    assert "install squashfuse and fuse3 on the nodes" in message


def test_a_mount_that_ends_during_the_job_fails_it_saying_so(
    client: SlurmClient, image_env: DeploymentMetadata
) -> None:
    script = (
        'greet; kill "$PIXI_DEPLOY_SQUASHFUSE_PID"; '
        'while kill -0 "$PIXI_DEPLOY_SQUASHFUSE_PID" 2>/dev/null; do sleep 0.1; done; greet'
    )
    job = client.submit(JobSpec(script=script, environment_path=image_env.deployment_path))
    result = job.wait(timeout=120)
    assert result.state == "FAILED" and result.exit_code != 0
    out, err = job.logs()
    assert out.count("hello from greet") == 1  # before the mount ended, not after
    assert "ended during the job (squashfuse stopped); run it again" in err


def _double(x: int) -> int:
    import os

    return x * 2 if os.environ.get("PIXI_DEPLOY_IMAGE_MOUNTED") == "squashfuse" else -1


def test_executor_runs_a_function_in_an_image_deployment(
    test_cluster, tmp_path: Path, base: str
) -> None:
    """`[tool.pixi-deploy] format = "squashfs"`: the Executor deploys an image and runs there."""
    from helpers.cluster import ssh_settings_for
    from pixi_deploy.slurm import Executor

    from .executor_workspace import make_executor_workspace

    ws = make_executor_workspace(tmp_path / "functions")
    manifest = ws / "pixi.toml"
    manifest.write_text(manifest.read_text() + '\n[tool.pixi-deploy]\nformat = "squashfs"\n')
    settings = ssh_settings_for(test_cluster).with_changes(base_path=base)
    with Transport(settings) as transport:
        executor = Executor(
            manifest_path=manifest,
            resources=JobResources(time="10", mem="300M"),
            transport=transport,
            cache_dir=tmp_path / "cache",
        )
        assert executor.submit(_double, 21).result(timeout=300) == 42
        images = transport.run_script('ls "$1/images"', [base]).stdout.split()
        assert len(images) == 2 and any(name.endswith(".sqfs") for name in images)


def test_image_built_on_the_cluster_from_its_directory_deployment_and_named(
    client: SlurmClient, transport: Transport, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    """The tree is laid out on the cluster already and it has mksquashfs: built there, only
    the metadata crosses the wire; a named deployment of it runs jobs too."""
    ws, cache = load_workspace(demo_ws), DownloadCache(tmp_path / "cache")
    store = RemoteStore(transport, base)
    directory = store.deploy(ws, cache=cache)
    image = store.deploy(ws, cache=cache, format="squashfs", name="proj/img")
    assert image.format == "squashfs" and not image.reused
    assert image.deployment_path == directory.deployment_path
    assert store.last_transfer.bundle_bytes < 20_000  # the lock's stream and metadata only
    assert image.image_sha256 == _sh(transport, 'sha256sum < "$1"', image.image or "").split()[0]
    named = f"{base}/names/proj/img"
    # the directory deployment still wins at its path; remove it to see the image mounted
    _sh(transport, 'rm -rf "$1" && mkdir "$1"', directory.deployment_path)
    job = client.submit(JobSpec(command=["greet"], environment_path=named))
    result = job.wait(timeout=120)
    assert result.ok, result.message()
    assert "hello from greet" in job.logs()[0] and SQUASHFUSE in job.logs()[1]


def test_image_uploaded_after_the_build_runs_too(
    client: SlurmClient, transport: Transport, base: str, demo_ws: Path, tmp_path: Path, monkeypatch
) -> None:
    """The path a retry after a dropped connection takes: the finished image sent in one
    checksummed stream (STREAM_WHILE_BUILDING off)."""
    import pixi_deploy.store.remote_image as remote_image

    monkeypatch.setattr(remote_image, "STREAM_WHILE_BUILDING", False)
    store = RemoteStore(transport, base)
    image = store.deploy(
        load_workspace(demo_ws), cache=DownloadCache(tmp_path / "cache"), format="squashfs"
    )
    assert image.image_sha256 == _sh(transport, 'sha256sum < "$1"', image.image or "").split()[0]
    assert _sh(transport, 'ls -A "$1/images"', base).split() == [
        f"{image.deployment_path.rsplit('/', 1)[-1]}.json",
        f"{image.deployment_path.rsplit('/', 1)[-1]}.sqfs",
    ]
    job = client.submit(JobSpec(command=["greet"], environment_path=image.deployment_path))
    assert job.wait(timeout=120).ok and "hello from greet" in job.logs()[0]
