"""The interpreter test environments wrap, and wheels from PyPI for their pixi.lock.

The cluster user cannot enter /root (where this process's interpreter lives), so test
environments wrap one of Debian's interpreters; their conda ``python`` must carry its
version. Wheels are downloaded once per machine into one cache folder that every test module
(and the benchmarks) share.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

WHEELS = Path("/tmp/pixi-deploy-test-wheels")
DEBIAN_PYTHON = "/usr/bin/python3"


def python_version(interpreter: str = DEBIAN_PYTHON) -> str:
    """``X.Y`` of ``interpreter``."""
    out = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def pip_download(
    requirements: Sequence[str],
    options: Sequence[str] = (),
    dest: Path = WHEELS,
    timeout: float = 600,
) -> None:
    """``pip download`` binary wheels of ``requirements`` into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            *requirements,
            "--only-binary=:all:",
            *options,
            "-d",
            str(dest),
            "--quiet",
        ],
        check=True,
        timeout=timeout,
    )
