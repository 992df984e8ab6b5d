"""Squashfs environments on nodes without squashfuse: the job script falls back to
``apptainer`` / ``singularity`` with the image bound at the environment's path
(``--bind IMG:MNT:image-src=/``) in the container ``$PIXI_DEPLOY_APPTAINER_IMAGE``.

Apptainer cannot be installed on this machine (it is not in Debian 12), so the tests put a
stand-in ``apptainer`` on the job's PATH (FAKE_APPTAINER): it records the arguments it got,
checks that every bind source exists, and does the image bind itself (squashfuse in a private
user and mount namespace, by its absolute path) before it runs the command. So the tests prove
that our script chooses it, passes the right bind spec and container, and that the command then
runs with the image at its path. squashfuse is hidden from the script by a PATH without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pixi_deploy.pack import DownloadCache
from pixi_deploy.slurm import JobResources, JobSpec, SlurmClient
from pixi_deploy.store.image import IMAGE_FAILED_STATUS, build_image, mount_and_run_argv
from pixi_deploy.store.metadata import DeploymentMetadata
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.transport import Transport
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.usefixtures("image_tools")
CONTAINER = "docker://debian:12"

# A stand-in for Apptainer (not installable here: not in Debian 12). @ARGS@ = file it records
# its arguments in, @SQUASHFUSE@ = squashfuse's absolute path (hidden from the PATH).
FAKE_APPTAINER = r"""#!/bin/sh
printf '%s\n' "$@" > '@ARGS@'
fail() { printf 'fake apptainer: %s\n' "$1" >&2; exit 91; }
[ "$1" = exec ] && [ "$2" = --bind ] || fail "expected: exec --bind SPEC CONTAINER CMD..."
spec=$3; box=$4; shift 4
[ -n "$box" ] && [ "$#" -gt 0 ] || fail "no container or no command"
first=${spec%%,*}
img=${first%%:*}; rest=${first#*:}; mnt=${rest%%:*}
[ "${rest#*:}" = "image-src=/" ] || fail "the first bind $first is not IMG:MNT:image-src=/"
old=$IFS; IFS=,
for b in $spec; do [ -e "${b%%:*}" ] || fail "bind source ${b%%:*} does not exist"; done
IFS=$old
exec /usr/bin/unshare --user --map-root-user --mount /bin/sh -c '
  "$1" -f "$2" "$3" & fuse=$!
  until [ -e "$3/activate.sh" ]; do
    kill -0 "$fuse" 2>/dev/null || { echo "fake apptainer: squashfuse failed" >&2; exit 92; }
    sleep 0.1
  done
  shift 3; "$@"; rc=$?
  kill "$fuse"; wait "$fuse"; exit $rc' sh '@SQUASHFUSE@' "$img" "$mnt" "$@"
"""

# Every program of this machine, linked into one folder, except the ones named (and squashfuse).
_LINK_ALL_BUT = (
    'dir=$1; shift; mkdir -p "$dir"; for f in /usr/bin/* /usr/sbin/*; do n=${f##*/}; skip=; '
    'for x in squashfuse squashfuse_ll apptainer singularity "$@"; do [ "$n" = "$x" ] && skip=1; '
    'done; [ -n "$skip" ] || ln -sf "$f" "$dir/"; done'
)


def _fake(args_file: str) -> str:
    squashfuse = shutil.which("squashfuse")
    assert squashfuse, "image_tools installs squashfuse"
    return FAKE_APPTAINER.replace("@ARGS@", args_file).replace("@SQUASHFUSE@", squashfuse)


def _bin_dir(path: Path, *hidden: str, apptainer: str | None = None) -> Path:
    subprocess.run(["sh", "-c", _LINK_ALL_BUT, "sh", str(path), *hidden], check=True)
    if apptainer is not None:
        (path / "apptainer").write_text(apptainer)
        (path / "apptainer").chmod(0o755)
    return path


@pytest.fixture
def local_image(tmp_path: Path) -> tuple[Path, Path, str]:
    """An image of a tiny environment under a store-like base: (image, mountpoint, sha256)."""
    base = tmp_path / "base"
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "activate.sh").write_text("echo activated\n")
    (tree / "marker").write_text("inside the image\n")
    for name in ("envs/k1", "images", "locks", "runs/r1"):
        (base / name).mkdir(parents=True)
    image = base / "images" / "k1.sqfs"
    return image, base / "envs" / "k1", build_image(tree, image)


def _run(argv: list[str], path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "PIXI_DEPLOY_APPTAINER_IMAGE"}
    return subprocess.run(
        argv, env=dict(clean, PATH=str(path), **env), capture_output=True, text=True, timeout=120
    )


def test_without_squashfuse_apptainer_binds_the_image_and_runs_the_command(
    local_image: tuple[Path, Path, str], tmp_path: Path
) -> None:
    image, mnt, sha = local_image
    base = mnt.parent.parent
    args_file = tmp_path / "apptainer.args"
    path = _bin_dir(tmp_path / "bin", apptainer=_fake(str(args_file)))
    script = tmp_path / "outside" / "job.sh"  # a script outside the base, as Slurm's spool
    script.parent.mkdir()
    script.write_text('cat "$1/marker"; echo "mounted=$PIXI_DEPLOY_IMAGE_MOUNTED $2"\n')
    argv = mount_and_run_argv(str(image), str(mnt), sha, ["/bin/sh", str(script), str(mnt), "a b"])
    done = _run(argv, path, PIXI_DEPLOY_APPTAINER_IMAGE=CONTAINER)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "inside the image\nmounted=apptainer a b\n"
    binds = [f"{image}:{mnt}:image-src=/", f"{base}/locks", f"{base}/runs", f"{script}:{script}:ro"]
    assert args_file.read_text().splitlines() == [
        "exec",
        "--bind",
        ",".join(binds),
        CONTAINER,
        "/bin/sh",
        str(script),
        str(mnt),
        "a b",
    ]
    (line,) = done.stderr.splitlines()
    assert line == (
        f"pixi-deploy: mounting {image} at {mnt} on {os.uname().nodename} with apptainer exec "
        f"--bind {image}:{mnt}:image-src=/ in the container {CONTAINER} (the node has no squashfuse)"
    )
    assert list(mnt.iterdir()) == []  # only the command saw the image


def test_apptainer_without_a_container_or_nothing_at_all_fails_naming_what_is_missing(
    local_image: tuple[Path, Path, str], tmp_path: Path
) -> None:
    image, mnt, sha = local_image
    args_file = tmp_path / "apptainer.args"
    argv = mount_and_run_argv(str(image), str(mnt), sha, ["touch", str(tmp_path / "ran")])

    with_apptainer = _bin_dir(tmp_path / "bin", apptainer=_fake(str(args_file)))
    unset = _run(argv, with_apptainer)
    missing_box = _run(argv, with_apptainer, PIXI_DEPLOY_APPTAINER_IMAGE=str(tmp_path / "no.sif"))

    # no squashfuse, user namespaces that fail (an unshare that refuses), no apptainer
    bare = _bin_dir(tmp_path / "bare", "unshare")
    (bare / "unshare").write_text("#!/bin/sh\nexit 1\n")
    (bare / "unshare").chmod(0o755)
    nothing = _run(argv, bare, PIXI_DEPLOY_APPTAINER_IMAGE=CONTAINER)

    for done in (unset, missing_box, nothing):
        assert done.returncode == IMAGE_FAILED_STATUS and done.stdout == ""
        assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "has no squashfuse to mount the environment image, and no container is set for " in (
        unset.stderr
    )
    assert "set PIXI_DEPLOY_APPTAINER_IMAGE in the job's environment" in unset.stderr
    assert f"the container {tmp_path / 'no.sif'} (PIXI_DEPLOY_APPTAINER_IMAGE) does not exist" in (
        missing_box.stderr
    )
    assert (
        "has no squashfuse, unprivileged user namespaces (unshare --user --map-root-user --mount "
        "fails) and no apptainer or singularity to mount the environment image: install "
        "squashfuse and fuse3 on the nodes (or Apptainer)"
    ) in nothing.stderr
    assert not args_file.exists() and not (tmp_path / "ran").exists()


@pytest.mark.cluster
def test_a_slurm_job_without_squashfuse_runs_in_the_image_through_apptainer(
    client: SlurmClient, transport: Transport, base: str, demo_ws: Path, tmp_path: Path
) -> None:
    image_env: DeploymentMetadata = RemoteStore(transport, base).deploy(
        load_workspace(demo_ws), cache=DownloadCache(tmp_path / "cache"), format="squashfs"
    )
    bin_dir, args_file = f"{base}/apptainer-bin", f"{base}/apptainer.args"
    transport.run_script(
        _LINK_ALL_BUT.replace("shift; mkdir", "fake=$2; shift 2; mkdir")
        + '; printf "%s" "$fake" > "$dir/apptainer" && chmod 755 "$dir/apptainer"',
        [bin_dir, _fake(args_file)],
    )
    export = f"--export=ALL,PATH={bin_dir},PIXI_DEPLOY_APPTAINER_IMAGE={CONTAINER}"
    job = client.submit(
        JobSpec(
            command=["sh", "-c", 'greet && echo "via $PIXI_DEPLOY_IMAGE_MOUNTED"'],
            environment_path=image_env.deployment_path,
            resources=JobResources(extra_sbatch=[export]),
        )
    )
    result = job.wait(timeout=180)
    out, err = job.logs()
    assert result.ok, (result.message(), err)
    assert "hello from greet" in out and "via apptainer" in out
    assert f"with apptainer exec --bind {image_env.image}:{image_env.deployment_path}" in err
    assert f"in the container {CONTAINER} (the node has no squashfuse)" in err
    recorded = transport.run_script('cat "$1"', [args_file]).stdout.splitlines()
    assert recorded[:2] == ["exec", "--bind"] and recorded[3] == CONTAINER
    binds = recorded[2].split(",")
    assert binds[0] == f"{image_env.image}:{image_env.deployment_path}:image-src=/"
    assert f"{base}/runs" in binds and f"{base}/locks" in binds
    assert not any(b.startswith((f"{base}/envs", f"{base}/images")) for b in binds[1:])
    # the batch script itself (in slurmd's spool, outside the base) is bound read-only
    assert any(b.endswith("slurm_script:ro") for b in binds), binds
    assert recorded[4:6] == ["/bin/bash", binds[-1].split(":")[0]]
