#!/usr/bin/env python3
"""Peak memory of every pixi-deploy command that handles packages, next to ``tar -x``'s
(issue 18: each must stay at or below 256 MB for any package size).

For each payload size asked for (default 0.1 and 1 GB; ``--sizes 0.1,1,3`` adds 3 GB) it builds
one CUDA-like package (`pixi_deploy.testing.large`: a few 256 MB, practically incompressible
files), and, unless ``--no-env``, the 300-package synthetic environment of ``bench_pack.py``;
then runs, each as its own process tree, from a warm download cache:

    tar -xf of the plain pack (the baseline)     pack (plain), pack --compress
    unpack of the plain pack, of the zstd pack   unpack - (zstd pack piped from cat)
    deploy --target local (directory; squashfs: mksquashfs is the largest process)
    image (oci-dir, uncompressed layers)
    pack --self-extracting, and running the installer it wrote (sh)

and prints, for each, the peak RSS of its largest process (what ``/usr/bin/time -v``, Slurm and
HTCondor report: exact, from the kernel) and the whole tree's sampled peak PSS
(`pixi_deploy.testing.memory`), with its time and the time's ratio to ``tar -x``.
``--src DIR`` runs another checkout's ``src`` (e.g. the code before a change).

Run from the repository root::

    python benchmarks/bench_memory.py                    # 0.1 + 1 GB + the 300-package env
    python benchmarks/bench_memory.py --sizes 3 --no-env # the 3 GB package only
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pixi_deploy.testing.channel import build_channel, lock_workspace, synthetic_specs
from pixi_deploy.testing.large import LargePackage, build_large_package, index_large_packages
from pixi_deploy.testing.memory import Peak, measure

GOAL = 256 << 20
CODE = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
MB = 1e6


def large_workspace(root: Path, payload: int) -> Path:
    package = LargePackage("big", payload)
    build_large_package(package, root / "channel")
    index_large_packages(root / "channel", [package])
    lock_workspace(root / "workspace", root / "channel", {"default": ["big"]}, ["linux-64"])
    return root / "workspace"


def synthetic_workspace(root: Path, n_packages: int, size: int) -> Path:
    specs = synthetic_specs(n_packages=n_packages, total_bytes=size, subdir="linux-64", seed=0)
    build_channel(root / "channel", specs)
    names = [s.name for s in specs]
    lock_workspace(root / "workspace", root / "channel", {"default": names}, ["linux-64"])
    return root / "workspace"


def commands(
    ws: Path, work: Path, src: Path, ssh_base: str | None
) -> list[tuple[str, list[str | Path], dict[str, Any]]]:
    """(name, argv, options) of every measured run, in order (later ones use earlier outputs)."""
    cli: list[str | Path] = [sys.executable, "-c", CODE]
    m = ["--manifest-path", ws]
    out = work / "out"
    pipe = f"cat {work / 'env.tar.zst'} | {sys.executable} -c '{CODE}' unpack - {out / 'stdin'}"
    ssh: list[tuple[str, list[str | Path], dict[str, Any]]] = []
    if ssh_base is not None:
        argv: list[str | Path] = [*cli, "deploy", *m, "--target", "ssh", "--base", ssh_base]
        ssh = [("deploy --target ssh", [*argv, "--metadata-out", out / "ssh.json"], {})]
    return [
        (
            "tar -xf (plain pack)",
            ["tar", "-xf", work / "env.tar", "-C", out / "tar"],
            {"mk": "tar"},
        ),
        ("pack", [*cli, "pack", *m, "-o", out / "again.tar"], {}),
        ("pack --compress", [*cli, "pack", *m, "--compress", "-o", out / "again.tar.zst"], {}),
        ("unpack (plain pack)", [*cli, "unpack", work / "env.tar", out / "plain"], {}),
        ("unpack (zstd pack)", [*cli, "unpack", work / "env.tar.zst", out / "zstd"], {}),
        ("cat zstd pack | unpack -", ["sh", "-c", pipe], {}),
        (
            "deploy --target local",
            [*cli, "deploy", *m, "--base", out / "store", "--metadata-out", out / "md.json"],
            {},
        ),
        (
            "deploy --target local --format squashfs",
            [*cli, "deploy", *m, "--base", out / "sqstore", "--format", "squashfs"],
            {},
        ),
        (
            "image (oci-dir)",
            [
                *cli,
                "image",
                *m,
                "-t",
                "bench:1",
                "--output",
                "oci-dir",
                "--dest",
                out / "image",
                "--compression",
                "none",
                "--base",  # the default base (ubuntu:24.04) is pulled from docker.io: no network
                "scratch",
                "--cache-dir",
                work / "image-cache",
            ],
            {},
        ),
        *ssh,
        ("pack --self-extracting", [*cli, "pack", *m, "--self-extracting", "-o", out / "i.sh"], {}),
        ("sh installer (self-extracting)", ["sh", out / "i.sh", "--target", out / "sx"], {}),
    ]


def run_set(
    label: str, ws: Path, work: Path, src: Path, ssh_base: str | None
) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(src), "PIXI_DEPLOY_CACHE_DIR": str(work / "cache")}
    cli = [sys.executable, "-c", CODE]
    for args in (["-o", work / "env.tar"], ["--compress", "-o", work / "env.tar.zst"]):
        subprocess.run(
            [*cli, "pack", "--manifest-path", ws, *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    rows: list[dict[str, Any]] = []
    baseline: Peak | None = None
    for name, argv, options in commands(ws, work, src, ssh_base):
        (work / "out").mkdir(exist_ok=True)
        if "mk" in options:
            (work / "out" / options["mk"]).mkdir()
        subprocess.run(["sync"], check=False)
        peak, errors = measure(argv, env=env)
        if peak.returncode != 0:
            print(f"{label}: {name} failed ({peak.returncode}): {errors.strip()[-300:]}")
        baseline = baseline or peak
        rows.append(
            {
                "set": label,
                "command": name,
                "max_rss_mb": round(peak.max_rss / MB, 1),
                "tree_pss_mb": round(peak.tree_pss / MB, 1),
                "seconds": round(peak.seconds, 2),
                "vs_tar": round(peak.seconds / baseline.seconds, 2),
                "ok": peak.returncode == 0 and max(peak.max_rss, peak.tree_pss) <= GOAL,
            }
        )
        for left in (work / "out").iterdir():  # untimed; only the installer is used later
            if left.is_dir():
                shutil.rmtree(left)
            elif left.name != "i.sh":
                left.unlink()
    shutil.rmtree(work / "out", ignore_errors=True)
    return rows


def _ssh_base() -> str:
    return f"{os.environ['SLURM_DEPLOYMENT_BASE_PATH']}/bench-memory-{uuid.uuid4().hex[:8]}"


def _remove_remote(base: str) -> None:
    """The benchmark's own store on the cluster, and nothing else."""
    e = os.environ
    subprocess.run(
        [
            *(
                "ssh",
                "-p",
                e.get("SLURM_EDGE_NODE_PORT", "22"),
                "-i",
                e["SLURM_EDGE_NODE_KEY_PATH"],
            ),
            *(
                "-o",
                f"UserKnownHostsFile={e['SLURM_EDGE_NODE_KNOWN_HOSTS']}",
                "-o",
                "BatchMode=yes",
            ),
            f"{e['SLURM_EDGE_NODE_USER']}@{e['SLURM_EDGE_NODE_HOST']}",
            f"rm -rf {shlex.quote(base)}",
        ],
        check=False,
    )


def print_rows(rows: Sequence[dict[str, Any]]) -> None:
    print(
        f"{'set':<22} {'command':<32} {'max RSS MB':>10} {'tree PSS MB':>11} "
        f"{'s':>7} {'vs tar':>7}  goal"
    )
    for r in rows:
        print(
            f"{r['set']:<22} {r['command']:<32} {r['max_rss_mb']:>10.1f} {r['tree_pss_mb']:>11.1f} "
            f"{r['seconds']:>7.2f} {r['vs_tar']:>6.2f}x  {'ok' if r['ok'] else 'MISSED'}"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="0.1,1", help="payload GB of the large package")
    parser.add_argument("--no-env", action="store_true", help="skip the 300-package environment")
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--env-size", type=int, default=1_000_000_000, help="its payload bytes")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--tmpdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--ssh",
        action="store_true",
        help="also deploy --target ssh, to the cluster the SLURM_EDGE_NODE_* variables name, "
        "under $SLURM_DEPLOYMENT_BASE_PATH/bench-memory-<random> (removed afterwards)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows: list[dict[str, Any]] = []
    sets: list[float | None] = [float(s) for s in args.sizes.split(",") if s]
    if not args.no_env:
        sets.append(None)
    for gigabytes in sets:
        with tempfile.TemporaryDirectory(dir=args.tmpdir, prefix="bench-memory-") as tmp:
            root = Path(tmp)
            if gigabytes is None:
                ws = synthetic_workspace(root, args.packages, args.env_size)
                name = f"{args.packages} pkgs, {args.env_size / 1e9:g} GB"
            else:
                ws = large_workspace(root, int(gigabytes * 1e9))
                name = f"1 package, {gigabytes:g} GB"
            ssh_base = _ssh_base() if args.ssh else None
            try:
                rows += run_set(name, ws, root, args.src.resolve(), ssh_base)
            finally:
                if ssh_base is not None:
                    _remove_remote(ssh_base)
            if not args.json:
                print_rows([r for r in rows if r["set"] == name])
                print(flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
