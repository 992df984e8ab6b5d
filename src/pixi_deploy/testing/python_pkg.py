"""A conda ``python`` package for test environments that wraps this machine's interpreter.

Real CPython packages are tens of megabytes and cannot be downloaded in tests; this one is a few
hundred bytes. Its ``bin/python`` (and ``bin/python3``) is a shell script that runs
:data:`sys.executable` with the environment's ``lib/pythonX.Y/site-packages`` on ``PYTHONPATH``,
so wheels installed into the environment import, console scripts run, and ``python`` on ``PATH``
after activation is "the environment's" interpreter. The prefix is patched in at install time
(a text-mode placeholder), exactly as in a real package, so relocation is exercised too.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import rattler

from pixi_deploy.testing.channel import (
    TEXT_PLACEHOLDER,
    PackageSpec,
    build_channel,
    demo_specs,
    lock_workspace,
)

__all__ = [
    "add_pypi_to_lock",
    "make_python_workspace",
    "python_wrapper_spec",
    "write_python_project",
]

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


# --------------------------------------------------------------------------------------------
# A PyPI project to depend on by path, and a workspace that does
# --------------------------------------------------------------------------------------------

#: A PEP 517 build backend with no dependencies (in-tree, ``backend-path``), so building the
#: project needs neither the network nor setuptools. It writes a real wheel: the package's .py
#: files, METADATA, WHEEL, entry_points.txt and RECORD, with the current time as zip timestamps
#: (as a careless backend would). A file FAIL_BUILD in the project makes it fail with that
#: file's text; $PIXI_DEPLOY_TEST_BUILD_LOG, when set, gets one line per build.
_BACKEND = """\
import base64, hashlib, os, time, tomllib, zipfile
from pathlib import Path


def _project():
    return tomllib.loads(Path("pyproject.toml").read_text())["project"]


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if Path("FAIL_BUILD").exists():
        raise RuntimeError(Path("FAIL_BUILD").read_text().strip())
    log = os.environ.get("PIXI_DEPLOY_TEST_BUILD_LOG")
    if log:
        with open(log, "a") as out:
            out.write(os.getcwd() + "\\n")
    project = _project()
    name, version = project["name"], project["version"]
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {}
    for path in sorted(Path(dist).rglob("*.py")):
        files[path.as_posix()] = path.read_bytes()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n".encode()
    files[f"{info}/WHEEL"] = (
        b"Wheel-Version: 1.0\\nGenerator: pixi-deploy-test-backend\\n"
        b"Root-Is-Purelib: true\\nTag: py3-none-any\\n"
    )
    scripts = project.get("scripts", {})
    if scripts:
        body = "[console_scripts]\\n" + "".join(f"{k} = {v}\\n" for k, v in scripts.items())
        files[f"{info}/entry_points.txt"] = body.encode()
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{info}/RECORD,,")
    files[f"{info}/RECORD"] = ("\\n".join(record) + "\\n").encode()
    wheel = f"{dist}-{version}-py3-none-any.whl"
    stamp = time.localtime()[:6]
    with zipfile.ZipFile(Path(wheel_directory) / wheel, "w", zipfile.ZIP_DEFLATED) as out:
        for path, data in files.items():
            out.writestr(zipfile.ZipInfo(path, date_time=stamp), data)
    return wheel
"""

_MODULE = """\
import os
import sys

MESSAGE = {message!r}


def main():
    print(f"{{MESSAGE}} from {name} {version} in {{os.path.realpath(sys.prefix)}}")
    print("prefix " + os.environ.get("CONDA_PREFIX", "unset"))
"""


def write_python_project(
    folder: Path, name: str = "myproj", version: str = "0.1.0", message: str = "hello"
) -> Path:
    """A small pure-Python project (``<name>`` module, ``<name>-hello`` console script) built by
    an in-tree backend without dependencies. Returns ``folder``."""
    dist = name.replace("-", "_")
    (folder / dist).mkdir(parents=True, exist_ok=True)
    (folder / "_backend").mkdir(exist_ok=True)
    (folder / "_backend" / "test_backend.py").write_text(_BACKEND)
    (folder / "pyproject.toml").write_text(
        "[build-system]\n"
        "requires = []\n"
        'build-backend = "test_backend"\n'
        'backend-path = ["_backend"]\n\n'
        "[project]\n"
        f'name = "{name}"\n'
        f'version = "{version}"\n\n'
        "[project.scripts]\n"
        f'{name}-hello = "{dist}:main"\n'
    )
    (folder / dist / "__init__.py").write_text(
        _MODULE.format(message=message, name=name, version=version)
    )
    (folder / "README.md").write_text(f"# {name}\n")
    return folder


def add_pypi_to_lock(
    workspace_dir: Path,
    packages: Sequence[tuple[str, str, str]],
    *,
    environment: str = "default",
    sha256: Mapping[str, str] | None = None,
) -> Path:
    """Rewrite ``pixi.lock`` with PyPI ``packages`` (name, version, location) added to
    ``environment`` on every locked platform, as pixi records them (a path dependency is a
    location relative to the workspace, without a hash). ``sha256`` maps a location to the hash
    to record for it (for index packages)."""
    path = workspace_dir / "pixi.lock"
    old = rattler.LockFile.from_path(path)
    new = rattler.LockFile([rattler.LockPlatform(p.name) for p in old.platforms()])
    platforms = {p.name: p for p in new.platforms()}
    for env_name, env in old.environments():
        new.set_channels(env_name, [rattler.LockChannel(str(c)) for c in env.channels()])
        for platform in env.platforms():
            for record in env.conda_repodata_records_for_platform(platform) or []:
                new.add_conda_package(env_name, platforms[platform.name], record)
            if env_name == environment:
                for name, version, location in packages:
                    new.add_pypi_package(
                        env_name, platforms[platform.name], name, version, location
                    )
    new.to_path(path)
    if sha256:
        text = path.read_text()
        packages_section = text.index("\npackages:\n")  # not the environments' references
        for location, digest in sha256.items():
            entry = f"- pypi: {location}\n"
            start = text.index(entry, packages_section)
            version_line = text.index("\n", text.index("  version:", start)) + 1
            text = text[:version_line] + f"  sha256: {digest}\n" + text[version_line:]
        path.write_text(text)
    return path


def make_python_workspace(
    dest: Path,
    *,
    platforms: Sequence[str] = ("linux-64",),
    path_dependencies: Mapping[str, str] | None = None,
    conda: Sequence[str] = ("greet", "python"),
    interpreter: str | None = None,
) -> Path:
    """The demo channel plus :func:`python_wrapper_spec`, and a workspace at ``dest/workspace``
    whose default environment has ``conda`` packages and path dependencies (name -> relative
    path, each written with :func:`write_python_project`; default ``{"myproj": "./myproj"}``)."""
    specs = demo_specs(platforms) + [
        python_wrapper_spec(p, interpreter=interpreter) for p in platforms
    ]
    channel = build_channel(dest / "channel", specs)
    workspace = dest / "workspace"
    deps = {"myproj": "./myproj"} if path_dependencies is None else dict(path_dependencies)
    manifest = ""
    if deps:
        manifest = "\n[pypi-dependencies]\n" + "".join(
            f"{name} = {{ path = {json.dumps(rel)}, editable = true }}\n"
            for name, rel in deps.items()
        )
    lock_workspace(workspace, channel, {"default": list(conda)}, platforms, extra_manifest=manifest)
    for name, rel in deps.items():
        write_python_project(workspace / rel, name)
    if deps:
        add_pypi_to_lock(workspace, [(name, "0.1.0", rel) for name, rel in deps.items()])
    return workspace
