"""Benchmark `pixi-deploy image`: build vs `tar` of the same bytes, and a re-push after one change.

Run: ``python benchmarks/bench_image.py [--packages 120] [--mb 300]`` (root; needs docker-registry,
installed with apt-get if missing). Prints a table:

- image build (lay out + per-package gzip layers + config/manifest) vs ``tar -cf`` and
  ``tar -czf`` of the laid-out prefix (the same bytes);
- a no-change rebuild (every package layer reused from the layer cache);
- after one package changed: rebuild time and bytes pushed vs the first push.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from containers.registry_fixture import start_registry
from pixi_deploy.containers.image import ImageOptions, build_image
from pixi_deploy.pack import DownloadCache, unpack, write_pack
from pixi_deploy.testing.channel import (
    GeneratedBytes,
    build_channel,
    lock_workspace,
    synthetic_specs,
)
from pixi_deploy.workspace import load_workspace


def timed(fn):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packages", type=int, default=120)
    parser.add_argument("--mb", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-image-") as tmp_name:
        tmp = Path(tmp_name)
        specs = synthetic_specs(args.packages, args.mb * 1_000_000)
        names = [s.name for s in specs]
        channel, ws = tmp / "channel", tmp / "ws"
        build_channel(channel, specs)
        lock_workspace(ws, channel, {"default": names}, ["linux-64"])
        resolved = load_workspace(ws).resolve("default", "linux-64")
        cache = DownloadCache(tmp / "cache")
        pack = write_pack(resolved, tmp / "p.tar", cache=cache).path
        prefix = unpack(pack, tmp / "prefix").prefix
        payload = sum(f.stat().st_size for f in prefix.rglob("*") if f.is_file())

        _, t_tar = timed(
            lambda: subprocess.run(
                ["tar", "-C", str(prefix), "-cf", str(tmp / "a.tar"), "."], check=True
            )
        )
        _, t_tgz = timed(
            lambda: subprocess.run(
                ["tar", "-C", str(prefix), "-czf", str(tmp / "a.tgz"), "."], check=True
            )
        )
        registry = start_registry(tmp / "registry")
        try:
            tag = f"{registry.host}/bench/env:1"
            first, t_build = timed(
                lambda: build_image(
                    resolved, ImageOptions(base="scratch", tag=tag, push=True, cache=cache)
                )
            )
            _, t_again = timed(
                lambda: build_image(
                    resolved, ImageOptions(base="scratch", tag=tag, cache=cache, dest=tmp / "o.oci")
                )
            )
            # one mid-sized package changes its content
            victim = sorted(
                specs, key=lambda s: sum(getattr(c, "size", 0) or len(c) for c in s.files.values())
            )[len(specs) // 2]
            changed = [
                dataclasses.replace(
                    s,
                    version="1.0.1",
                    files={
                        k: (
                            GeneratedBytes(v.seed + 1, v.size)
                            if isinstance(v, GeneratedBytes)
                            else v
                        )
                        for k, v in s.files.items()
                    },
                )
                if s is victim
                else s
                for s in specs
            ]
            shutil.rmtree(channel)
            build_channel(channel, changed)
            lock_workspace(ws, channel, {"default": names}, ["linux-64"])
            resolved2 = load_workspace(ws).resolve("default", "linux-64")
            cache.fetch_all([])  # nothing: fetching is part of the build below
            second, t_rebuild = timed(
                lambda: build_image(
                    resolved2, ImageOptions(base="scratch", tag=tag, push=True, cache=cache)
                )
            )
        finally:
            registry.stop()
        assert first.push is not None and second.push is not None
        rows = [
            ("payload (installed prefix)", f"{payload / 1e6:.0f} MB, {len(specs)} packages", ""),
            ("tar -cf prefix", f"{t_tar:.2f} s", "1.00x"),
            ("tar -czf prefix", f"{t_tgz:.2f} s", f"{t_tgz / t_tar:.2f}x"),
            (
                "image build + first push (gzip)",
                f"{t_build:.2f} s",
                f"{t_build / t_tar:.2f}x tar, {t_build / t_tgz:.2f}x tar -z",
            ),
            (
                "rebuild, nothing changed (oci-dir)",
                f"{t_again:.2f} s",
                f"{t_again / t_tar:.2f}x tar",
            ),
            (
                "rebuild + push, 1 package changed",
                f"{t_rebuild:.2f} s",
                f"{t_rebuild / t_build:.2f}x first build",
            ),
            (
                "bytes pushed, first push",
                f"{first.push.bytes_uploaded / 1e6:.1f} MB",
                f"{len(first.push.uploaded)} blobs",
            ),
            (
                "bytes pushed, after the change",
                f"{second.push.bytes_uploaded / 1e6:.2f} MB",
                f"{len(second.push.uploaded)} blobs, {second.push.bytes_uploaded / first.push.bytes_uploaded:.2%} of first",
            ),
        ]
        width = max(len(r[0]) for r in rows)
        for label, value, ratio in rows:
            print(f"{label:<{width}}  {value:>22}  {ratio}")


if __name__ == "__main__":
    main()
