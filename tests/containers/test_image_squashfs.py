"""`pixi-deploy image --output squashfs`: the image's root filesystem as one squashfs file.

Checked with the real tools: unsquashfs reads it and extracts the very tree umoci unpacks from
the same image's OCI layout; squashfuse mounts it without root (in a user + mount namespace, as
jobs mount environment images) and chroot runs the environment's program through the image's
entrypoint, as `apptainer exec env.sqfs /app/entrypoint.sh CMD` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from containers.registry_fixture import ensure_tools
from helpers.workspaces import CliResult
from pixi_deploy.containers.image import ImageOptions, ImageResult, build_image
from pixi_deploy.pack import DownloadCache
from pixi_deploy.workspace import load_workspace

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("image_tools")]
PREFIX = "/app/.pixi/envs/default"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    ensure_tools()  # umoci (and skopeo, busybox); image_tools: squashfs-tools, squashfuse


@pytest.fixture(scope="module")
def built(
    demo_ws: Path,
    cache: DownloadCache,
    busybox_base: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ImageResult, ImageResult]:
    """The demo environment on the busybox base, as a squashfs and as an OCI layout."""
    folder = tmp_path_factory.mktemp("sqfs")
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    common = {"tag": "demo:1.0", "base": f"{busybox_base}:latest", "cache": cache}
    sqfs = build_image(
        resolved, ImageOptions(output="squashfs", dest=folder / "env.sqfs", **common)
    )
    oci = build_image(resolved, ImageOptions(dest=folder / "env.oci", **common))
    return sqfs, oci


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    """path -> (mode, symlink target or sha256 of the content) of every entry under root."""
    found: dict[str, tuple[int, str]] = {}
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            st = path.lstat()
            if path.is_symlink():
                what = f"-> {os.readlink(path)}"
            elif path.is_file():
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                what = "dir"
            found[str(path.relative_to(root))] = (st.st_mode, what)
    return found


def test_the_squashfs_holds_exactly_the_images_rootfs(
    built: tuple[ImageResult, ImageResult], tmp_path: Path
) -> None:
    sqfs, oci = built
    assert sqfs.output_kind == "squashfs" and sqfs.output is not None
    assert sqfs.manifest_digest == oci.manifest_digest  # the same image, written two ways
    assert sorted(p.name for p in sqfs.output.parent.iterdir()) == ["env.oci", "env.sqfs"]
    info = subprocess.run(
        ["unsquashfs", "-s", sqfs.output], capture_output=True, text=True, check=True
    ).stdout
    assert "Compression zstd" in info
    listing = subprocess.run(
        ["unsquashfs", "-lls", sqfs.output], capture_output=True, text=True, check=True
    ).stdout
    lines = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in listing.splitlines() if line.startswith(("d", "-", "l"))}  # fmt: skip
    entry = lines["squashfs-root/app/entrypoint.sh"]
    assert entry.startswith("-rwxr-xr-x root/root"), entry
    assert lines["squashfs-root/bin/sh"].startswith("lrwxrwxrwx root/root")
    assert f"squashfs-root{PREFIX}/bin/greet" in lines
    assert f"squashfs-root{PREFIX}/conda-meta" in lines

    extracted = tmp_path / "extracted"
    subprocess.run(["unsquashfs", "-d", extracted, sqfs.output], check=True, capture_output=True)
    rootfs = tmp_path / "rootfs"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{oci.output}:1.0", rootfs],
        check=True,
        capture_output=True,
    )
    squashed, unpacked = _tree(extracted), _tree(rootfs)
    assert squashed == unpacked
    assert squashed["bin/sh"][1] == "-> busybox"
    assert (extracted / PREFIX.lstrip("/") / "activate.sh").is_file()


MOUNT_AND_CHROOT = r"""
img=$1; mnt=$2; shift 2
squashfuse -f "$img" "$mnt" &
fuse=$!
n=0
until [ -n "$(ls -A "$mnt")" ]; do
  kill -0 "$fuse" 2>/dev/null || { echo "squashfuse exited" >&2; exit 90; }
  n=$((n + 1)); [ "$n" -lt 1200 ] || { echo "not mounted after 120 s" >&2; exit 91; }
  sleep 0.1
done
chroot "$mnt" "$@"
rc=$?
umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt"
wait "$fuse"
exit $rc
"""


def test_mounted_without_root_it_runs_the_environment_through_the_entrypoint(
    built: tuple[ImageResult, ImageResult], tmp_path: Path
) -> None:
    sqfs, _ = built
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    run = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c", MOUNT_AND_CHROOT,
         "sh", str(sqfs.output), str(mnt), "/app/entrypoint.sh", "greet"],
        capture_output=True, text=True, env={"PATH": PATH}, timeout=240, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"hello from greet 1.0.0 at {PREFIX}" in run.stdout
    assert "libgreet says hello" in run.stdout
    assert f"config: {PREFIX}/etc/greet.conf" in run.stdout  # activate.d ran
    assert not any(mnt.iterdir())  # the mount was this namespace's only


def _one_line_error(result: CliResult, *words: str) -> str:
    assert result.exit_code == 9, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()  # progress steps (•) may come first
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.stderr
    return errors[0]


def test_default_name_and_bad_destinations_leave_nothing_behind(
    demo_ws: Path,
    busybox_base: Path,
    tmp_path: Path,
    tmpfs: Callable[..., Path],
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = tmp_path / "cache"
    args = ("image", "--manifest-path", demo_ws, "-p", "linux-64", "--tag", "demo:2",
            "--base", f"{busybox_base}:latest", "--cache-dir", cache, "--output", "squashfs")  # fmt: skip
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    ok = cli(*args)
    assert ok.exit_code == 0, ok.stderr
    assert f"wrote squashfs {work / 'demo-2-linux-64.sqfs'}" in ok.stdout
    assert [p.name for p in work.iterdir()] == ["demo-2-linux-64.sqfs"]  # no partial file

    folder = tmp_path / "a-folder"
    folder.mkdir()
    _one_line_error(cli(*args, "--dest", folder), f"--dest {folder} is a folder")
    assert list(folder.iterdir()) == []
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    _one_line_error(
        cli(*args, "--dest", not_a_folder / "env.sqfs"), f"{not_a_folder} is not a folder"
    )
    small = tmpfs("64k")  # the busybox base alone squashes to more
    _one_line_error(
        cli(*args, "--dest", small / "env.sqfs"),
        f"no space left on the device holding {small}",
        "free space or pick another folder",
    )
    assert list(small.iterdir()) == []
    assert [p.name for p in (cache / "oci" / "tmp").iterdir()] == []  # no unpacked rootfs left

    tools = tmp_path / "bin"
    tools.mkdir()
    (tools / "umoci").symlink_to(shutil.which("umoci") or "/usr/bin/umoci")
    monkeypatch.setenv("PATH", str(tools))
    line = _one_line_error(
        cli(*args, "--dest", tmp_path / "x.sqfs"),
        "needs mksquashfs",
        "apt-get install squashfs-tools",
    )
    assert "umoci" not in line.split("(")[0]
    assert not (tmp_path / "x.sqfs").exists()


CODE = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
# the real mksquashfs, then a pause: the signal lands while a complete image waits to be renamed
SLOW_MKSQUASHFS = """#!/bin/sh
"{real}" "$@" || exit $?
: > "{mark}"
exec sleep 600
"""


def _children(pid: int) -> list[int]:
    found = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat_file.parent.name))
    return found


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_squashing_publishes_nothing_and_stops_mksquashfs(
    signum: int, demo_ws: Path, busybox_base: Path, tmp_path: Path
) -> None:
    tools, mark, out, cache = (tmp_path / n for n in ("bin", "squashed", "out", "cache"))
    tools.mkdir()
    out.mkdir()
    wrapper = tools / "mksquashfs"
    wrapper.write_text(SLOW_MKSQUASHFS.format(real=shutil.which("mksquashfs"), mark=mark))
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": f"{tools}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join(sys.path)}  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-c", CODE, "image", "--manifest-path", demo_ws, "-p", "linux-64",
         "--tag", "demo:3", "--base", f"{busybox_base}:latest", "--cache-dir", cache,
         "--output", "squashfs", "--dest", out / "env.sqfs"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not mark.exists():
            assert proc.poll() is None, proc.communicate()[1].decode()
            assert time.monotonic() < deadline, "mksquashfs never finished"
            time.sleep(0.05)
        sleepers = _children(proc.pid)  # the wrapper, exec'd into sleep
        assert sleepers
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and b"Traceback" not in err, err.decode()
    assert list(out.iterdir()) == []  # neither env.sqfs nor its partial file
    assert [p.name for p in (cache / "oci" / "tmp").iterdir()] == []  # nor the unpacked rootfs
    for pid in sleepers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
