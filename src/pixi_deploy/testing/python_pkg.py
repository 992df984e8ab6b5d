"""A conda ``python`` package for test environments that wraps this machine's interpreter.

Real CPython packages are tens of megabytes and cannot be downloaded in tests; this one is a few
hundred bytes. Its ``bin/python`` (and ``bin/python3``) is a shell script that runs
:data:`sys.executable` with the environment's ``lib/pythonX.Y/site-packages`` on ``PYTHONPATH``,
so wheels installed into the environment import, console scripts run, and ``python`` on ``PATH``
after activation is "the environment's" interpreter. The prefix is patched in at install time
(a text-mode placeholder), exactly as in a real package, so relocation is exercised too.
"""

from __future__ import annotations

import sys

from pixi_deploy.testing.channel import TEXT_PLACEHOLDER, PackageSpec

__all__ = ["python_wrapper_spec"]

_WRAPPER = """\
#!/bin/sh
# python: this machine's interpreter with the environment's site-packages (pixi-deploy tests)
prefix="{placeholder}"
PYTHONPATH="$prefix/{site}${{PYTHONPATH:+:$PYTHONPATH}}"
export PYTHONPATH
exec "{interpreter}" "$@"
"""


def python_wrapper_spec(
    subdir: str,
    version: str = f"{sys.version_info.major}.{sys.version_info.minor}",
    *,
    interpreter: str | None = None,
    build: str = "h0_wrapper",
) -> PackageSpec:
    """A ``python`` package for ``subdir`` (``version`` decides the site-packages folder).

    ``interpreter`` defaults to :data:`sys.executable`; the package only runs on machines that
    have it at that path, which is what tests want.
    """
    major_minor = ".".join(version.split(".")[:2])
    site = f"lib/python{major_minor}/site-packages"
    script = _WRAPPER.format(
        placeholder=TEXT_PLACEHOLDER, site=site, interpreter=interpreter or sys.executable
    )
    return PackageSpec(
        name="python",
        version=version,
        build=build,
        subdir=subdir,
        files={
            "bin/python": script,
            "bin/python3": script,
            f"{site}/README.txt": "site-packages of the pixi-deploy test python wrapper\n",
        },
        prefix_files={"bin/python": "text", "bin/python3": "text"},
        executables=frozenset({"bin/python", "bin/python3"}),
    )
