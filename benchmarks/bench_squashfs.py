"""Directory vs single-file (squashfs) deployments to the test cluster, measured in one run.

Needs the test cluster (``scripts/test-cluster start``) and squashfs-tools + squashfuse
(``scripts/test-cluster image-tools``). For a synthetic environment (default 300 packages):

- inodes on the cluster after a cold deploy (everything under the base path);
- cold deploy time and bytes moved, directory vs ``--format squashfs``;
- the floor the image deploy is judged against: ``mksquashfs`` of the same laid-out tree plus
  its transfer (``ssh host 'cat > file'``), timed together;
- a cold start: page cache dropped, then a program that opens and reads every file of one
  package, under ``strace -c -f`` (its metadata system calls) and timed: from the directory,
  from the image through squashfuse (in the job's private namespace), and from the kernel's
  squashfs (a loop mount; root only, shown where it works).

Goals (issue 18): 1 inode per environment (plus the store's bookkeeping); image deploy time
<= 1.3x mksquashfs + transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from bench_deploy import cluster_settings, ssh_argv
from bench_pack import settle

from pixi_deploy.pack import DownloadCache, artifacts_of
from pixi_deploy.store import LocalStore
from pixi_deploy.store.image import MOUNT_AND_RUN, mksquashfs_argv
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import build_channel, lock_workspace, synthetic_specs
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

METADATA_CALLS = (
    "openat",
    "open",
    "newfstatat",
    "fstat",
    "stat",
    "lstat",
    "statx",
    "getdents64",
    "readlink",
    "readlinkat",
    "access",
    "faccessat2",
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--size", type=int, default=300_000_000, help="total package bytes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = cluster_settings()
    root = Path(tempfile.mkdtemp(prefix="bench-squashfs-"))
    try:
        return measure(args, settings, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace, settings: SSHSettings, root: Path) -> int:
    remote_root = f"{settings.base_path}/bench-sqfs-{uuid.uuid4().hex[:6]}"
    specs = synthetic_specs(n_packages=args.packages, total_bytes=args.size)
    build_channel(root / "channel", specs)
    lock_workspace(
        root / "ws", root / "channel", {"default": [s.name for s in specs]}, ["linux-64"]
    )
    ws = load_workspace(root / "ws")
    resolved = ws.resolve("default", "linux-64")
    cache = DownloadCache(root / "cache")
    cache.fetch_all(artifacts_of(resolved))
    try:
        return _measure(args, settings, root, remote_root, ws, resolved, cache)
    finally:
        with Transport(settings) as t:
            t.run(["rm", "-rf", remote_root], check=False)


def _measure(args, settings, root, remote_root, ws, resolved, cache) -> int:  # type: ignore[no-untyped-def]
    results: dict[str, float] = {}
    with Transport(settings) as t:
        t.run(["mkdir", "-p", remote_root])
        RemoteStore(t, f"{remote_root}/warm").deploy(ws, "default", "linux-64", cache=cache)

    # the floor's tree: laid out here for the path the image deploy's tree is laid out for
    tree_store = LocalStore(root / "tree", cache)
    tree = Path(tree_store.deploy(resolved).deployment_path)

    def floor() -> None:
        image = root / f"floor-{uuid.uuid4().hex[:6]}.sqfs"
        subprocess.run(mksquashfs_argv(str(tree), str(image)), check=True, capture_output=True)
        dest = f"{remote_root}/floor-{image.name}"
        with open(image, "rb") as source:
            subprocess.run(
                [*ssh_argv(settings), f"cat > {shlex.quote(dest)}"], stdin=source, check=True
            )
        image.unlink()

    def deploy(fmt: str) -> tuple[float, int, str]:
        base = f"{remote_root}/{fmt}-{uuid.uuid4().hex[:6]}"
        with Transport(settings) as t:
            store = RemoteStore(t, base)
            start = time.perf_counter()
            store.deploy(ws, "default", "linux-64", cache=cache, format=fmt)
            took = time.perf_counter() - start
            return took, store.last_transfer.bundle_bytes, base

    floors, images, dirs = [], [], []
    moved: dict[str, int] = {}
    bases: dict[str, str] = {}
    archives = tuple(cache.path_for(a) for a in artifacts_of(resolved))

    def quiet() -> None:
        """The last deploy's background removals (its laid-out tree, its staging) finished
        first, then the usual settle: no measurement pays for another's deletes."""
        for thread in threading.enumerate():
            if thread.name == "tree" or thread.name.startswith("remove "):
                thread.join()
        settle(archives)

    for _ in range(args.repeat):  # interleaved: the same machine state for each
        quiet()
        settle((tree,))
        start = time.perf_counter()
        floor()
        floors.append(time.perf_counter() - start)
        quiet()
        took, moved["squashfs"], bases["squashfs"] = deploy("squashfs")
        images.append(took)
        quiet()
        took, moved["directory"], bases["directory"] = deploy("directory")
        dirs.append(took)
    results["floor_s"] = statistics.median(floors)
    results["image_deploy_s"] = statistics.median(images)
    results["directory_deploy_s"] = statistics.median(dirs)
    results["image_vs_floor"] = results["image_deploy_s"] / results["floor_s"]
    results["image_vs_floor_paired"] = statistics.median(
        i / f for i, f in zip(images, floors, strict=True)
    )
    results["image_bytes_moved"] = moved["squashfs"]
    results["directory_bytes_moved"] = moved["directory"]
    image_path = next((root / "tree" / "envs").iterdir())
    results["tree_bytes"] = int(
        subprocess.run(
            ["du", "-sb", str(image_path)], capture_output=True, text=True
        ).stdout.split()[0]
    )
    with Transport(settings) as t:
        for fmt, base in bases.items():
            count = t.run(["sh", "-c", 'find "$1" -xdev | wc -l', "sh", base]).stdout.strip()
            env_part = t.run(
                [
                    "sh",
                    "-c",
                    'find "$1/envs" "$1/images" "$1/objects" 2>/dev/null | wc -l',
                    "sh",
                    base,
                ]
            ).stdout.strip()
            results[f"{fmt}_inodes_total"] = int(count)
            results[f"{fmt}_inodes_environment"] = int(env_part)
        results.update(cold_starts(t, bases, resolved))
    goal = results["image_vs_floor"] <= 1.3 and results["image_vs_floor_paired"] <= 1.3
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            print(f"{key:32} {value:.3f}" if isinstance(value, float) else f"{key:32} {value}")
        print(f"goal image deploy <= 1.3x mksquashfs + transfer: {'met' if goal else 'MISSED'}")
    return 0 if goal else 1


def cold_starts(t: Transport, bases: dict[str, str], resolved) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Open and read every file of the largest package, page cache dropped first."""
    directory = f"{bases['directory']}/envs/{resolved.short_hash}"
    meta = t.run(
        ["sh", "-c", 'ls "$1"/conda-meta/*.json | head -n 400', "sh", directory]
    ).stdout.split()
    biggest, files = "", []
    for path in meta:
        record = json.loads(t.read_bytes(path))
        if len(record.get("files", [])) > len(files):
            biggest, files = record["name"], record["files"]
    listing = "\n".join(files) + "\n"
    list_path = f"{bases['directory']}/files.txt"
    t.put_bytes(listing.encode(), list_path)
    # prints the read's own time (ns): the squashfuse total also holds the image's checksum
    # and the mount, measured apart
    read_all = (
        's=$(date +%s%N); cd "$1" && xargs -d "\\n" cat < "$2" > /dev/null; '
        'e=$(date +%s%N); echo "read_ns=$((e - s))"'
    )
    out: dict[str, float] = {"cold_start_package_files": len(files)}
    image = f"{bases['squashfs']}/images/{resolved.short_hash}.sqfs"
    mnt = f"{bases['squashfs']}/envs/{resolved.short_hash}"
    ways = {
        "directory": ["sh", "-c", read_all, "sh", directory, list_path],
        "squashfuse": [
            "sh", "-c", MOUNT_AND_RUN, "sh", image, mnt, "",
            "sh", "-c", read_all, "sh", mnt, list_path,
        ],
    }  # fmt: skip
    kernel = Path(tempfile.mkdtemp(prefix="sqfs-kernel-"))
    kernel.chmod(0o755)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "squashfs", "-o", "loop,ro", image, str(kernel)], capture_output=True
        ).returncode
        == 0
    )
    if mounted:
        ways["kernel_squashfs"] = ["sh", "-c", read_all, "sh", str(kernel), list_path]
    print(f"cold start: {len(files)} files of {biggest}", file=sys.stderr)
    try:
        for name, argv in ways.items():
            trace = f"{bases['directory']}/strace-{name}.txt"
            # the timed program is strace's child; squashfuse's own work is in its daemon
            command = (
                ["strace", "-c", "-f", "-o", trace, *argv]
                if name != "squashfuse"
                else [*argv[:7], "strace", "-c", "-f", "-o", trace, *argv[7:]]
            )
            drop_caches()
            start = time.perf_counter()
            result = t.run(command, check=False)
            out[f"cold_start_{name}_total_s"] = time.perf_counter() - start
            read = [w for w in result.stdout.split() if w.startswith("read_ns=")]
            if read:
                out[f"cold_start_{name}_read_s"] = int(read[-1].split("=")[1]) / 1e9
            if result.exit_status != 0:
                print(f"{name}: {result.stderr.strip()[-300:]}", file=sys.stderr)
            out[f"cold_start_{name}_metadata_calls"] = metadata_calls(t.read_bytes(trace).decode())
    finally:
        if mounted:
            subprocess.run(["umount", str(kernel)], check=False)
        kernel.rmdir()
    return out


def drop_caches() -> None:
    os.sync()
    with contextlib.suppress(OSError):  # not root: warm caches
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def metadata_calls(summary: str) -> int:
    """Sum of the calls column of ``strace -c`` for the metadata system calls."""
    total = 0
    for line in summary.splitlines():
        words = line.split()
        if len(words) >= 5 and words[-1] in METADATA_CALLS:
            try:
                total += int(words[3])
            except ValueError:
                continue
    return total


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    sys.exit(main())
