#!/usr/bin/env python3
"""The real conda-forge environment (tests/data/realpkgs: openssl, krb5, libxml2, ... and three
noarch: python packages), next to the synthetic one of bench_pack / bench_deploy: `unpack`
against ``tar -x`` of the same installed tree, and a cold `deploy --target ssh` (both paths:
laid out here, and raw payloads unpacked on the cluster) against ``tar -c | ssh host tar -x``
of that tree. A third row puts `unpack` next to py-rattler's own install of the same lock (from
the local channel into a fresh package cache: extract, then link), the reference every install
path must match file by file.

Each pair is interleaved round by round, every timed run after `bench_pack.settle`; nothing is
deleted before the end. The environment is small (a few MB of archives), so fixed costs (the
deploy's connection and probe, unpack's verification of the pack) weigh more than in the
300-package run: these figures are about real packages' shapes (info/ inside payloads,
placeholders, softlink chains, .tar.bz2, noarch: python), not about throughput.

Needs the test cluster for the deploy rows (``--no-ssh`` skips them)::

    python benchmarks/bench_realpkgs.py [--repeat 7] [--no-ssh] [--json]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from bench_pack import settle

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.realpkgs import NATIVE, NOARCH_PYTHON, real_workspace  # noqa: E402
from helpers.reference import reference_install  # noqa: E402
from pixi_deploy.pack import DownloadCache, artifacts_of, unpack, write_pack  # noqa: E402
from pixi_deploy.workspace import load_workspace  # noqa: E402

#: The interpreter the python wrapper package points at (as in tests/pack/test_reference_installs)
SYSTEM_PYTHON = "/usr/bin/python3.11"
GOALS = {"unpack / tar -x": 1.5, "cold deploy / tar | ssh tar -x": 1.3}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pairs(
    candidate: Callable[[], object],
    floor: Callable[[], object],
    inputs: tuple[Path, ...],
    repeat: int,
) -> tuple[list[float], list[float]]:
    got: tuple[list[float], list[float]] = ([], [])
    for round_ in range(repeat):
        runs = [(0, candidate), (1, floor)]
        for side, fn in runs if round_ % 2 == 0 else runs[::-1]:
            settle(inputs)
            got[side].append(timed(fn))
    return got


def summary(name: str, cand: list[float], floor: list[float]) -> dict[str, object]:
    ratio = statistics.median(cand) / statistics.median(floor)
    paired = statistics.median(c / f for c, f in zip(cand, floor, strict=True))
    goal = GOALS.get(name)
    return {
        "what": name,
        "median_s": round(statistics.median(cand), 4),
        "floor_median_s": round(statistics.median(floor), 4),
        "ratio": round(ratio, 3),
        "paired_ratio": round(paired, 3),
        "goal": goal,
        "status": "" if goal is None else ("PASS" if max(ratio, paired) <= goal else "MISS"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-ssh", action="store_true", help="skip the deploy rows")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-realpkgs-"))
    rows = []
    try:
        workspace = real_workspace(root / "real", NATIVE + NOARCH_PYTHON, python=SYSTEM_PYTHON)
        resolved = load_workspace(workspace).resolve("default", "linux-64")
        cache = DownloadCache(root / "cache")
        pack = write_pack(resolved, root / "env.tar", cache=cache).path
        installed = root / "installed"
        unpack(pack, installed)
        tree_tar = root / "installed.tar"
        subprocess.run(["tar", "-cf", tree_tar, "-C", installed, "."], check=True)
        out = root / "out"
        out.mkdir()
        n = iter(range(10**6))

        def our_unpack() -> None:
            unpack(pack, out / f"u{next(n)}")

        def tar_x() -> None:
            target = out / f"t{next(n)}"
            target.mkdir()
            subprocess.run(["tar", "-xf", tree_tar, "-C", target], check=True)

        cand, floor = pairs(our_unpack, tar_x, (pack, tree_tar), args.repeat)
        rows.append(summary("unpack / tar -x", cand, floor))
        archives = tuple(cache.path_for(a) for a in artifacts_of(resolved))

        def rattler_install() -> None:  # from the local channel, into a fresh package cache
            i = next(n)
            reference_install(resolved.conda_records, out / f"r{i}", out / f"rc{i}")

        cand, floor = pairs(our_unpack, rattler_install, (pack, *archives), args.repeat)
        rows.append(summary("unpack / py-rattler install of the same lock", cand, floor))
        files = sum(1 for p in installed.rglob("*") if not p.is_dir())
        size = sum(p.stat().st_size for p in installed.rglob("*") if p.is_file())
        if not args.no_ssh:
            rows += deploy_rows(resolved, cache, installed, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data = {"environment": f"{len(resolved.conda_records)} real packages, {size / 1e6:.1f} MB "
            f"in {files} files installed", "rows": rows}  # fmt: skip
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"\n{data['environment']}; median of {args.repeat}")
        for r in rows:
            goal = f"(<= {r['goal']}) {r['status']}" if r["goal"] else ""
            print(
                f"{r['what']:<44} {r['median_s']:7.3f} s vs {r['floor_median_s']:7.3f} s: "
                f"{r['ratio']:.2f}x, paired {r['paired_ratio']:.2f}x {goal}"
            )
    return 0 if all(r["status"] != "MISS" for r in rows) else 1


def deploy_rows(resolved, cache, installed: Path, repeat: int) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    from bench_deploy import cluster_settings, ssh_argv

    from pixi_deploy.store.remote import RemoteStore
    from pixi_deploy.transport import Transport

    settings = cluster_settings()
    remote_root = f"{settings.base_path}/bench-real-{uuid.uuid4().hex[:6]}"
    workspace = resolved.workspace
    with Transport(settings) as t:  # warm the caches with a throwaway deploy of each path
        for raw in (True, False):
            RemoteStore(t, f"{remote_root}/warm-{raw}", raw_payloads=raw).deploy(
                workspace, "default", "linux-64", cache=cache
            )

    def floor() -> None:
        dest = f"{remote_root}/floor-{uuid.uuid4().hex[:6]}"
        remote = shlex.quote(f"mkdir -p {dest} && tar -xf - -C {dest}")
        tar = f"tar -cf - -C {shlex.quote(str(installed))} ."
        subprocess.run(f"{tar} | {shlex.join(ssh_argv(settings))} {remote}", shell=True, check=True)

    def cold(raw: bool) -> Callable[[], None]:
        def run() -> None:
            with Transport(settings) as t:
                base = f"{remote_root}/cold-{uuid.uuid4().hex[:6]}"
                store = RemoteStore(t, base, raw_payloads=raw)
                store.deploy(workspace, "default", "linux-64", cache=cache)

        return run

    rows = []
    try:
        for raw, label in ((False, "laid out here"), (True, "raw payloads unpacked there")):
            # the archives, not the whole cache: deploys remove their staging in the background
            archives = tuple(cache.path_for(a) for a in artifacts_of(resolved))
            cand, base = pairs(cold(raw), floor, (*archives, installed), repeat)
            row = summary("cold deploy / tar | ssh tar -x", cand, base)
            row["what"] = f"cold deploy ({label}) / tar | ssh tar -x"
            row["goal"] = GOALS["cold deploy / tar | ssh tar -x"]
            ok = max(float(row["ratio"]), float(row["paired_ratio"])) <= float(row["goal"])  # type: ignore[arg-type]
            row["status"] = "PASS" if ok else "MISS"
            rows.append(row)
    finally:
        with Transport(settings) as t:
            t.run(["rm", "-rf", remote_root])
    return rows


if __name__ == "__main__":
    sys.exit(main())
