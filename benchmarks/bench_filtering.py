#!/usr/bin/env python3
"""What the paths.json filtering and the target checks cost `unpack` on the 300-package
benchmark environment: the same pack unpacked by this checkout and by an older one.

The filtering (payload members that paths.json does not list are read and checked, never
written) has no switch to turn it off, so "before" is a source tree of the commit before it
(``git archive 6a634e9 src | tar -x -C DIR``), passed as ``--before-src DIR/src``. Both sides
run in their own process, interleaved round by round (before, after, after, before, ...), each
after `bench_pack.settle`; each child times only its ``unpack()`` call (not Python's start-up).
The target checks (glibc/CUDA against this machine, before anything moves) predate that commit,
so they are timed on their own: ``TargetFacts.here()`` + ``check_target`` in this process.

    git archive 6a634e9 src | tar -x -C /tmp/before
    python benchmarks/bench_filtering.py --before-src /tmp/before/src

Goal (issue 14): at most 5% more than before.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_pack import settle

from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.target import TargetFacts, check_target
from pixi_deploy.testing.channel import build_channel, lock_workspace, synthetic_specs
from pixi_deploy.workspace import load_workspace

REPO = Path(__file__).resolve().parents[1]
CHILD = (
    "import sys, time; from pathlib import Path; from pixi_deploy.pack import unpack;"
    "t = time.perf_counter(); unpack(Path(sys.argv[1]), Path(sys.argv[2]));"
    "print(time.perf_counter() - t)"
)
GOAL = 1.05


def unpack_with(src: Path, pack: Path, target: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(pack), str(target)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, required=True, help="the older src/ folder")
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--size", type=int, default=1_000_000_000, help="payload bytes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tmpdir", type=Path, default=Path("/tmp"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    before_src, after_src = args.before_src.resolve(), REPO / "src"
    root = Path(tempfile.mkdtemp(dir=args.tmpdir, prefix="bench-filtering-"))
    try:
        specs = synthetic_specs(n_packages=args.packages, total_bytes=args.size, seed=0)
        build_channel(root / "channel", specs)
        names = [s.name for s in specs]
        lock_workspace(root / "ws", root / "channel", {"default": names}, ["linux-64"])
        resolved = load_workspace(root / "ws").resolve("default", "linux-64")
        pack = write_pack(resolved, root / "env.tar", cache=DownloadCache(root / "cache")).path
        times: dict[str, list[float]] = {"before": [], "after": []}
        trash = root / "trash"
        trash.mkdir()
        for round_ in range(args.repeat):
            order = ("before", "after") if round_ % 2 == 0 else ("after", "before")
            for side in order:
                target = root / f"{side}-{round_}"
                settle([pack])
                src = before_src if side == "before" else after_src
                times[side].append(unpack_with(src, pack, target))
                target.rename(trash / target.name)  # deleted at the end (see README: ext4)
                if not args.json:
                    print(f"  round {round_ + 1} {side:6} {times[side][-1]:7.3f} s", flush=True)
        start = time.perf_counter()
        for _ in range(20):
            check_target(resolved.virtual_packages, TargetFacts.here(), "the environment")
        check_s = (time.perf_counter() - start) / 20
        return report(args, times, check_s)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # after the report: ~10 GB of trees take a while


def report(args: argparse.Namespace, times: dict[str, list[float]], check_s: float) -> int:
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    paired = statistics.median(a / b for a, b in zip(times["after"], times["before"], strict=True))
    data = {
        "packages": args.packages,
        "payload_bytes": args.size,
        "before_s": round(before, 3),
        "after_s": round(after, 3),
        "ratio": round(after / before, 3),
        "paired_ratio": round(paired, 3),
        "rounds": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "target_check_s": round(check_s, 5),
        "goal": GOAL,
        "cpus": os.cpu_count(),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
    }
    ok = max(after / before, paired) <= GOAL
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(
            f"\nunpack of {args.packages} packages: before {before:.3f} s, after {after:.3f} s: "
            f"{after / before:.3f}x (paired {paired:.3f}x; goal <= {GOAL}) "
            f"{'PASS' if ok else 'MISS'}\ntarget check (this machine): {check_s * 1000:.2f} ms "
            f"({check_s / after * 100:.2f}% of the unpack); {data['cpus']} CPUs, load average "
            f"{data['load_average_at_end'][1]:.1f}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
