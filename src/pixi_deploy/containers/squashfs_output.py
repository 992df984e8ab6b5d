"""Write a built image's root filesystem as one squashfs file: what Apptainer runs as it is.

``apptainer exec env.sqfs CMD`` takes a plain squashfs root filesystem, and a SIF wraps the same
squashfs as its root partition (``apptainer build env.sif env.sqfs``), so this output needs no
Apptainer, Docker or root on the build machine. The file holds exactly the OCI image's rootfs:
the image is written as an OCI layout in a scratch folder (blobs hard-linked from the store),
``umoci raw unpack --rootless`` applies its layers in order (whiteouts, modes, symlinks and hard
links as a runtime sees them; no chown, so no root needed), and store.image's ``mksquashfs``
build (zstd, every file owned by root, a full disk named as such) squashes that tree into a
partial file beside the destination, renamed into place once complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

from pixi_deploy.containers.oci import BuiltImage
from pixi_deploy.containers.oci_output import write_oci_dir
from pixi_deploy.errors import ContainerError, StoreError
from pixi_deploy.scratch import discarded_on_exit
from pixi_deploy.store.image import ImageBuild

#: the tools this output runs, and the Debian/Ubuntu package of each
TOOLS = {"umoci": "umoci", "mksquashfs": "squashfs-tools"}
_REF = "rootfs"  # the image's ref name in the scratch layout: nothing of the user's tag


def check_output(dest: Path | None) -> None:
    """Refuse in one line, before anything is built: a tool of this output missing here, or a
    destination that is a folder."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        packages = " ".join(TOOLS[tool] for tool in missing)
        raise ContainerError(
            f"--output squashfs needs {' and '.join(missing)}, not installed here",
            f"install it (apt-get install {packages}), or pick another --output",
        )
    if dest is None:
        return
    if dest.is_dir():
        raise ContainerError(f"--dest {dest} is a folder", "give the path of the .sqfs file")
    existing = next((p for p in Path(dest).absolute().parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ContainerError(
            f"cannot write {dest}: {existing} is not a folder", "pick another --dest"
        )


def write_squashfs(image: BuiltImage, dest: Path, work: Path) -> Path:
    """``dest``: the root filesystem of ``image`` as one zstd squashfs; ``work`` is an empty
    scratch folder the caller removes. Nothing is left at ``dest`` unless it is complete."""
    check_output(dest)
    rootfs = work / "rootfs"
    try:
        _unpack(write_oci_dir(image, work / "layout", _REF), rootfs)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            with discarded_on_exit(
                lambda: _partial_beside(dest), lambda path: path.unlink(missing_ok=True)
            ) as partial:
                _squash(rootfs, partial)
                os.chmod(partial, 0o644)
                os.replace(partial, dest)
        except OSError as error:
            raise ContainerError(
                f"cannot write {dest}: {error.strerror}", "pick another --dest"
            ) from error
    finally:
        _make_removable(rootfs)
    return dest


def _unpack(layout: Path, rootfs: Path) -> None:
    argv = ["umoci", "raw", "unpack", "--rootless", "--image", f"{layout}:{_REF}", str(rootfs)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError as error:
        raise ContainerError(f"cannot run umoci: {error.strerror}") from error
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise ContainerError(f"umoci could not unpack the image's layers: {detail[0]}")


def _partial_beside(dest: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    os.close(fd)
    return Path(name)


def _squash(rootfs: Path, partial: Path) -> None:
    """store.image's build; its one-line errors (a full disk) keep their words, as ours."""
    try:
        build = ImageBuild(rootfs, partial)
        try:
            build.wait()
        except BaseException:  # Ctrl-C, SIGTERM: no mksquashfs left writing the partial file
            build.kill()
            raise
    except StoreError as error:
        raise ContainerError(error.message, error.hint) from error


def _make_removable(rootfs: Path) -> None:
    """Give the owner write access to every folder of the unpacked tree (an image may hold
    read-only folders with files in them), so that the scratch folder's removal removes all."""
    if os.geteuid() == 0 or not rootfs.is_dir():
        return  # root removes anything
    for folder, subfolders, _ in os.walk(rootfs):
        for name in subfolders:
            path = os.path.join(folder, name)
            with contextlib.suppress(OSError):
                mode = os.lstat(path).st_mode
                if stat.S_ISDIR(mode) and mode & 0o700 != 0o700:
                    os.chmod(path, mode | 0o700)
