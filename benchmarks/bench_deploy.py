"""Deploy to a cluster over SSH, measured against floors taken in the same run.

Needs the test cluster (``scripts/test-cluster start``); everything runs over real SSH on
127.0.0.1. Prints, for a synthetic environment (default ~300 packages, ~1 GB):

- a cold deploy vs the floor ``tar -c PREFIX | ssh host tar -x`` of the same installed bytes;
- a no-op redeploy (fresh process-like transport) vs ``ssh host true`` (connect + one command);
- a redeploy after one package changed: bytes moved vs that package's bytes, time vs cold.

Goals (issue 3): cold <= 1.3x the floor, no-op <= 1.5x one round trip, one-package <= 1.05x
that package's bytes.
"""

from __future__ import annotations

import argparse
import json
import os
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

from pixi_deploy.pack import DownloadCache, artifacts_of
from pixi_deploy.store.remote import RemoteStore
from pixi_deploy.testing.channel import build_channel, lock_workspace, synthetic_specs, with_bumped
from pixi_deploy.transport import SSHSettings, Transport
from pixi_deploy.workspace import load_workspace

REPO = Path(__file__).resolve().parents[1]


def cluster_settings() -> SSHSettings:
    out = subprocess.run(
        [str(REPO / "scripts" / "test-cluster"), "env"], capture_output=True, text=True, check=True
    )
    values = {}
    for line in out.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export":
            key, value = words[1].split("=", 1)
            values[key] = value
    os.environ.update(values)
    return SSHSettings.from_env().with_changes(ssh_config=None)


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def ssh_argv(settings: SSHSettings) -> list[str]:
    return [
        "ssh", "-q", "-p", str(settings.port), "-i", str(settings.key_path),
        "-o", f"UserKnownHostsFile={settings.known_hosts}", "-o", "BatchMode=yes",
        f"{settings.user}@{settings.host}",
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packages", type=int, default=300)
    parser.add_argument("--size", type=int, default=1_000_000_000, help="total package bytes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the local work folder")
    args = parser.parse_args()

    settings = cluster_settings()
    root = Path(tempfile.mkdtemp(prefix="bench-deploy-"))
    try:
        return measure(args, settings, root)
    finally:
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)  # ~2 GB: channel, cache, installed trees


def measure(args: argparse.Namespace, settings: SSHSettings, root: Path) -> int:
    """Exit status 1 when a goal is missed."""
    remote_root = f"{settings.base_path}/bench-{uuid.uuid4().hex[:6]}"
    print(
        f"building {args.packages} packages ({args.size / 1e9:.2f} GB) in {root}", file=sys.stderr
    )
    specs = synthetic_specs(n_packages=args.packages, total_bytes=args.size)
    names = [s.name for s in specs]
    build_channel(root / "channel", specs)
    lock_workspace(root / "ws1", root / "channel", {"default": names}, ["linux-64"])
    # one mid-sized package gets a new build with new content
    sizes = sorted(
        specs,
        key=lambda s: sum(
            len(str(v)) if not hasattr(v, "size") else v.size for v in s.files.values()
        ),
    )
    changed = sizes[len(sizes) // 2].name
    bumped = [s for s in with_bumped(specs, changed) if s.name == changed]
    for spec in bumped:
        spec.files = {
            k: (v + "\n# changed\n" if isinstance(v, str) else v) for k, v in spec.files.items()
        }
        spec.files["share/changed.txt"] = "new content\n"
    build_channel(root / "channel", specs + bumped)
    lock_workspace(root / "ws2", root / "channel", {"default": names}, ["linux-64"])
    ws1, ws2 = load_workspace(root / "ws1"), load_workspace(root / "ws2")
    cache = DownloadCache(root / "cache")
    cache.fetch_all(artifacts_of(ws1.resolve("default", "linux-64")))
    cache.fetch_all(artifacts_of(ws2.resolve("default", "linux-64")))

    results: dict[str, float] = {}
    with Transport(settings) as t:
        t.run(["mkdir", "-p", remote_root])
        # warm every local cache (download + rattler's extracted packages) with a throwaway deploy
        RemoteStore(t, f"{remote_root}/warm").deploy(ws1, "default", "linux-64", cache=cache)
        RemoteStore(t, f"{remote_root}/warm").deploy(ws2, "default", "linux-64", cache=cache)
        prefix_local = root / "installed"
        from pixi_deploy.store import LocalStore

        installed = LocalStore(prefix_local, cache).deploy(ws1.resolve("default", "linux-64"))
        installed_bytes = int(
            subprocess.run(
                ["du", "-sb", installed.deployment_path], capture_output=True, text=True
            ).stdout.split()[0]
        )

    def floor() -> None:
        dest = f"{remote_root}/floor-{uuid.uuid4().hex[:6]}"
        cmd = f"tar -cf - -C {shlex.quote(installed.deployment_path)} . | {shlex.join(ssh_argv(settings))} {shlex.quote(f'mkdir -p {dest} && tar -xf - -C {dest}')}"
        subprocess.run(cmd, shell=True, check=True)

    cold_reports = []

    def cold() -> None:
        with Transport(settings) as t:
            store = RemoteStore(t, f"{remote_root}/cold-{uuid.uuid4().hex[:6]}")
            store.deploy(ws1, "default", "linux-64", cache=cache)
            cold_reports.append(store.last_transfer)

    # interleaved (floor, cold, floor, cold, ...) so both see the same page-cache and
    # filesystem state; nothing is deleted until the end (ext4 creates files several times
    # slower right after tens of thousands were deleted, see benchmarks/README.md); before each
    # timed run the machine is settled the same way (bench_pack.settle: the inputs in the page
    # cache, 3 GB of memory written and freed)
    floor_inputs = (Path(installed.deployment_path),)
    cold_inputs = (cache.root,)
    floor_times: list[float] = []
    cold_times: list[float] = []
    for _ in range(args.repeat):
        settle(floor_inputs)
        floor_times.append(timed(floor))
        settle(cold_inputs)
        cold_times.append(timed(cold))
    results["floor_s"] = statistics.median(floor_times)
    results["cold_s"] = statistics.median(cold_times)
    paired = statistics.median(c / f for c, f in zip(cold_times, floor_times, strict=True))
    rounds = ", ".join(f"{c:.2f}/{f:.2f}" for c, f in zip(cold_times, floor_times, strict=True))

    noop_base = f"{remote_root}/noop"
    with Transport(settings) as t:
        RemoteStore(t, noop_base).deploy(ws1, "default", "linux-64", cache=cache)

    def noop() -> None:
        with Transport(settings) as t:
            assert RemoteStore(t, noop_base).deploy(ws1, cache=cache).reused

    def round_trip() -> None:
        with Transport(settings) as t:
            t.run(["true"])

    results["ssh_true_s"] = timed(round_trip, args.repeat * 3)
    results["noop_s"] = timed(noop, args.repeat * 3)
    results["ssh_cli_true_s"] = timed(
        lambda: subprocess.run([*ssh_argv(settings), "true"], check=True), args.repeat
    )

    one_reports = []

    def one_package() -> None:
        with Transport(settings) as t:
            base = f"{remote_root}/one-{uuid.uuid4().hex[:6]}"
            RemoteStore(t, base).deploy(ws1, "default", "linux-64", cache=cache)
            store = RemoteStore(t, base)
            start = time.perf_counter()
            store.deploy(ws2, "default", "linux-64", cache=cache)
            one_reports.append(
                (time.perf_counter() - start, store.last_transfer, t.stats.bytes_uploaded)
            )

    for _ in range(args.repeat):
        one_package()
    results["one_package_s"] = statistics.median(r[0] for r in one_reports)
    one = one_reports[-1][1]
    changed_bytes = next(
        a.size or 0 for a in artifacts_of(ws2.resolve("default", "linux-64")) if a.name == changed
    )
    prefix2 = LocalStore(root / "installed2", cache).deploy(ws2.resolve("default", "linux-64"))
    meta = next(Path(prefix2.deployment_path, "conda-meta").glob(f"{changed}-*.json"))
    changed_installed = sum(
        p["size_in_bytes"] for p in json.loads(meta.read_text())["paths_data"]["paths"]
    )
    results.update(
        installed_bytes=installed_bytes,
        cold_bundle_bytes=cold_reports[-1].bundle_bytes,
        one_bundle_bytes=one.bundle_bytes,
        one_environment_part_bytes=one.environment_part_bytes,
        changed_package_archive_bytes=changed_bytes,
        changed_package_installed_bytes=changed_installed,
    )
    with Transport(settings) as t:
        t.run(["rm", "-rf", remote_root])

    ratios = {
        "cold / floor": results["cold_s"] / results["floor_s"],
        "cold / floor, median of per-round ratios": paired,
        "no-op / ssh round trip": results["noop_s"] / results["ssh_true_s"],
        "one-package bytes / package bytes": results["one_bundle_bytes"]
        / results["changed_package_installed_bytes"],
        "one-package time / cold": results["one_package_s"] / results["cold_s"],
    }
    goals = {
        "cold / floor": 1.3,
        "cold / floor, median of per-round ratios": 1.3,
        "no-op / ssh round trip": 1.5,
        "one-package bytes / package bytes": 1.05,
    }
    missed = [key for key, goal in goals.items() if ratios[key] > goal]
    if args.json:
        print(
            json.dumps(
                {"results": results, "ratios": ratios, "cold_rounds": rounds, "missed": missed},
                indent=2,
            )
        )
        return 1 if missed else 0
    print(f"\ncold/floor seconds per round: {rounds}")
    print(f"\nenvironment: {args.packages} packages, {installed_bytes / 1e6:.0f} MB installed")
    print(f"{'measurement':42} {'value':>12}")
    for key, value in results.items():
        shown = f"{value:.3f} s" if key.endswith("_s") else f"{value / 1e6:.2f} MB"
        print(f"{key:42} {shown:>12}")
    print(f"\n{'ratio':42} {'value':>8}  goal")
    for key, value in ratios.items():
        goal = goals.get(key)
        verdict = "" if goal is None else (f"<= {goal}  " + ("PASS" if value <= goal else "MISS"))
        print(f"{key:42} {value:8.2f}  {verdict}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
