"""Single-file environments: one squashfs image per environment instead of a tree of files.

Parallel filesystems (Lustre, GPFS) are slow at the tens of thousands of small files of a conda
environment; sites advise one squashfs image per environment. The image is built (``mksquashfs``,
zstd) from a tree laid out for the environment's usual path ``BASE/envs/<hash>``, published as
``BASE/images/<hash>.sqfs`` beside ``BASE/images/<hash>.json`` (its deployment metadata, with the
image's sha256), and ``BASE/envs/<hash>`` stays an empty folder: the mountpoint. A job makes
the image appear there for itself only (`MOUNT_AND_RUN`).
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import subprocess
from pathlib import Path

from pixi_deploy.errors import StoreError

FORMATS = ("directory", "squashfs")
#: Exit status of a job (or run) whose image cannot be verified or mounted (as a missing
#: environment: slurm/script.py's ENV_MISSING_STATUS).
IMAGE_FAILED_STATUS = 97


def check_format(value: str | None) -> str:
    """``directory`` (default) or ``squashfs``; anything else is refused in one line."""
    chosen = value or "directory"
    if chosen not in FORMATS:
        raise StoreError(
            f"unknown deployment format '{chosen}'", "use --format directory or --format squashfs"
        )
    return chosen


def mksquashfs_argv(tree: str, image: str) -> list[str]:
    """The one build command, here and on the cluster: zstd at level 3 (mksquashfs's default,
    15, took 15x as long for a 10% smaller image of the benchmark's environment), every file
    owned by root (the mounting user sees its own files either way), no progress bar."""
    return [
        "mksquashfs",
        tree,
        image,
        "-comp",
        "zstd",
        "-Xcompression-level",
        "3",
        "-noappend",
        "-no-progress",
        "-quiet",
        "-all-root",
        # its caches default to a quarter of the machine's memory: 0.7-1.6 GB of RSS for the
        # 1 GB benchmark tree on a 24 GB machine, a worker node's whole allowance; 128 MB gave
        # 102 MB peak RSS in the same time (7.0 s vs 7.2 s)
        "-mem",
        "128M",
        "-no-xattrs",
    ]


def build_image(tree: Path, image: Path) -> str:
    """Build ``image`` from ``tree`` here; returns its sha256. A partial image is removed."""
    ImageBuild(tree, image).wait()
    return sha256_of(image)


class ImageBuild:
    """``mksquashfs`` running here: its output may be read (and sent) while it grows."""

    def __init__(self, tree: Path, image: Path) -> None:
        if shutil.which("mksquashfs") is None:
            raise StoreError(
                "mksquashfs is not installed here, and the image is built here",
                "install squashfs-tools (apt-get install squashfs-tools), or deploy with "
                "--format directory",
            )
        self.image = image
        try:
            self.process = subprocess.Popen(
                mksquashfs_argv(str(tree), str(image)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        except OSError as error:
            raise StoreError(f"cannot run mksquashfs: {error.strerror}") from error

    def running(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.running():
            self.process.kill()
        self.process.wait()
        self.image.unlink(missing_ok=True)

    def wait(self) -> None:
        """Raise one line if it failed (a full disk says so); a partial image is removed."""
        _, stderr = self.process.communicate()
        if self.process.returncode == 0:
            return
        self.image.unlink(missing_ok=True)
        detail = stderr.strip().splitlines()[-1:] or [f"exit status {self.process.returncode}"]
        full = shutil.disk_usage(self.image.parent).free < (1 << 20)
        if any(word in detail[0] for word in ("No space", "space left", "Disk quota")) or (
            "Failed to write" in detail[0] and full
        ):
            raise StoreError(
                f"no space left on the device holding {self.image.parent} while building the image",
                "free space or pick another folder",
            )
        raise StoreError(f"mksquashfs could not build the image: {detail[0]}")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError as error:
        if error.errno == errno.ENOENT:
            raise StoreError(f"the image {path} does not exist", "deploy it again") from error
        raise StoreError(f"cannot read the image {path}: {error.strerror}") from error
    return digest.hexdigest()


# sh: `__pd_sha256 < FILE` prints FILE's sha256 (hex). OpenSSL's digest where there is one:
# five times coreutils' sha256sum on this machine (0.59 s vs 3.19 s for a 505 MB image), which
# every job start and every image deploy pays once.
SHA256_SH = r"""
__pd_sha256() {
  if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r | cut -d' ' -f1
  else sha256sum | cut -d' ' -f1; fi
}
"""


# Verify, then make the image appear at the mountpoint for the command only, then run it there.
# $1 = image, $2 = mountpoint, $3 = expected sha256 ("" = read it from the image's .json),
# then the command. The first way the node has, logged on stderr:
# - squashfuse inside a private user + mount namespace (two jobs on one node never share a
#   mount; it disappears with the job); the command then runs under the caller's own uid again.
#   A mount that ends during the command (squashfuse killed) is reported, and fails the run.
# - else apptainer (or singularity) with the image bound at the mountpoint
#   (`--bind IMG:MNT:image-src=/`) in the container $PIXI_DEPLOY_APPTAINER_IMAGE (a SIF file or
#   docker:// image of the nodes' OS the site provides: the command runs inside it, so its own
#   programs come from that container and the environment's from the image). The folders of
#   BASE beside envs/ (runs, locks, code snapshots, names) and the files the command reads (a
#   batch script in Slurm's spool) are bound too, at their own paths, so the job script can run
#   again inside the container. Paths with ',' or ':' cannot be written in a --bind spec.
# A node with neither fails with one line naming every piece that is missing.
MOUNT_AND_RUN = (
    SHA256_SH
    + r"""
img=$1; mnt=$2; want=$3; shift 3
node=${SLURMD_NODENAME:-$(uname -n)}
__pd_img_fail() { printf 'pixi-deploy: %s\n' "$1" >&2; exit @STATUS@; }
[ -f "$img" ] || __pd_img_fail "the environment image $img does not exist on $node (pruned or never deployed); deploy it again"
meta=${img%.sqfs}.json
if [ -z "$want" ] && [ -f "$meta" ]; then
  want=$(sed -n 's/.*"image_sha256": *"\([0-9a-f]*\)".*/\1/p' "$meta" | head -n 1)
fi
[ -n "$want" ] || __pd_img_fail "the environment image $img has no recorded sha256 ($meta is missing); deploy it again"
[ -r "$img" ] || __pd_img_fail "cannot read the environment image $img on $node"
have=$(__pd_sha256 < "$img" 2>/dev/null)
[ "$have" = "$want" ] || __pd_img_fail "the environment image $img is corrupt or truncated (its sha256 is not the one recorded at deploy); deploy it again (prune it first)"
[ -d "$mnt" ] || __pd_img_fail "the mountpoint $mnt of the environment image does not exist; deploy it again"
missing=
command -v squashfuse >/dev/null 2>&1 || missing="squashfuse"
if ! command -v unshare >/dev/null 2>&1; then missing="${missing:+$missing, }unshare (util-linux)"
elif ! unshare --user --map-root-user --mount true 2>/dev/null; then
  missing="${missing:+$missing, }unprivileged user namespaces (unshare --user --map-root-user --mount fails)"
fi
if [ -z "$missing" ]; then
  printf 'pixi-deploy: mounting %s at %s on %s with squashfuse in a private user and mount namespace\n' "$img" "$mnt" "$node" >&2
  export PIXI_DEPLOY_IMAGE_MOUNTED=squashfuse
  exec unshare --user --map-root-user --mount /bin/sh -c '
    img=$1; mnt=$2; uid=$3; gid=$4; shift 4
    squashfuse -f "$img" "$mnt" &
    fuse=$!
    n=0
    until [ -e "$mnt/activate.sh" ]; do
      if ! kill -0 "$fuse" 2>/dev/null || [ "$n" -ge 600 ]; then
        kill "$fuse" 2>/dev/null
        printf "pixi-deploy: squashfuse could not mount %s at %s (its message is above); the node needs FUSE (/dev/fuse usable by users)\n" "$img" "$mnt" >&2
        exit @STATUS@
      fi
      n=$((n + 1)); sleep 0.1
    done
    export PIXI_DEPLOY_SQUASHFUSE_PID=$fuse
    if unshare --help 2>/dev/null | grep -q -- --map-user; then
      unshare --user --map-user="$uid" --map-group="$gid" -- "$@"
    else
      "$@"
    fi
    rc=$?
    if ! kill -0 "$fuse" 2>/dev/null || [ ! -e "$mnt/activate.sh" ]; then
      printf "pixi-deploy: the mount of the environment image %s at %s ended during the job (squashfuse stopped); run it again\n" "$img" "$mnt" >&2
      [ "$rc" -ne 0 ] || rc=@STATUS@
    fi
    umount "$mnt" 2>/dev/null || fusermount3 -u "$mnt" 2>/dev/null
    kill "$fuse" 2>/dev/null
    wait "$fuse" 2>/dev/null
    exit $rc' sh "$img" "$mnt" "$(id -u)" "$(id -g)" "$@"
fi
runtime=
for r in apptainer singularity; do
  if command -v "$r" >/dev/null 2>&1; then runtime=$r; break; fi
done
[ -n "$runtime" ] || __pd_img_fail "$node has no $missing and no apptainer or singularity to mount the environment image: install squashfuse and fuse3 on the nodes (or Apptainer), or deploy with --format directory ($img)"
box=${PIXI_DEPLOY_APPTAINER_IMAGE:-}
[ -n "$box" ] || __pd_img_fail "$node has no $missing to mount the environment image, and no container is set for $runtime: set PIXI_DEPLOY_APPTAINER_IMAGE in the job's environment to a SIF file or docker:// image of the nodes' OS, or install squashfuse and fuse3 on the nodes, or deploy with --format directory ($img)"
case $box in
  *://*) ;;
  *) [ -f "$box" ] || __pd_img_fail "the container $box (PIXI_DEPLOY_APPTAINER_IMAGE) does not exist on $node; set it to a SIF file or docker:// image of the nodes' OS" ;;
esac
base=${mnt%/envs/*}
[ "$base" != "$mnt" ] || base=
case $img$mnt$base in
  *[,:]*) __pd_img_fail "$runtime cannot bind $img at $mnt (a ',' or ':' in the path); deploy under a base path without them" ;;
esac
binds="$img:$mnt:image-src=/"
if [ -n "$base" ]; then
  for d in "$base"/*; do
    case ${d##*/} in envs|images|'*') continue ;; esac
    binds="$binds,$d"
  done
fi
n=0
for a in "$@"; do
  n=$((n + 1))
  [ "$n" -gt 1 ] && [ -f "$a" ] || continue
  case $a in /*) ;; *) continue ;; esac
  case $a in *[,:]*) continue ;; esac
  if [ -n "$base" ]; then case $a in "$base"/*) continue ;; esac; fi
  binds="$binds,$a:$a:ro"
done
printf 'pixi-deploy: mounting %s at %s on %s with %s exec --bind %s:%s:image-src=/ in the container %s (the node has no %s)\n' "$img" "$mnt" "$node" "$runtime" "$img" "$mnt" "$box" "$missing" >&2
export PIXI_DEPLOY_IMAGE_MOUNTED=$runtime
exec "$runtime" exec --bind "$binds" "$box" "$@"
""".replace("@STATUS@", str(IMAGE_FAILED_STATUS))
)


def mount_and_run_argv(image: str, mountpoint: str, sha256: str, command: list[str]) -> list[str]:
    """``sh -c MOUNT_AND_RUN`` with its arguments: for a local run of an image deployment."""
    return ["/bin/sh", "-c", MOUNT_AND_RUN, "sh", image, mountpoint, sha256, *command]
