"""Add local package files to an environment: ``pack --inject FILE`` / ``deploy --inject FILE``.

A conda archive (``.conda`` / ``.tar.bz2``) is read with py-rattler (its ``info/index.json``,
sha256 and size) and checked against the locked environment before anything is written: every
locked package's ``depends`` and ``constrains`` that name it must match it, and its own
``depends`` and ``constrains`` must match what is locked. A locked package of the same name is
replaced (that is how a locally built fix goes in); a conflict is one error naming both sides.

A wheel is hashed and installed like the locked wheels (replacing a locked one of the same name).

Injected files join the environment's identity: their sha256 is part of the lock hash, so a
deployment with an injected file never reuses one without it.

:func:`prepare_environment` is what ``pack`` and ``deploy`` call before writing: channel settings
for the workspace, path dependencies built, files injected.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path

import rattler
from installer.utils import parse_wheel_filename

from pixi_deploy.channels import ChannelSettings
from pixi_deploy.errors import PackError
from pixi_deploy.pack.fetch import DownloadCache
from pixi_deploy.pack.pathdeps import build_path_dependencies
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.workspace import INJECTED, PypiPackage, ResolvedEnvironment, is_injected

CONDA_SUFFIXES = (".conda", ".tar.bz2")


def prepare_environment(
    resolved: ResolvedEnvironment,
    cache: DownloadCache,
    *,
    inject: Sequence[Path] = (),
    build_sdists: bool = False,
    reporter: Reporter | None = None,
) -> ResolvedEnvironment:
    """Everything ``pack`` / ``deploy`` do before fetching: the workspace's pixi configuration
    (mirrors, credentials), path dependencies built into wheels, files injected."""
    if cache._channels is None:  # explicit settings win over the workspace's
        cache.channels = ChannelSettings.load(resolved.workspace.root)
    resolved = build_path_dependencies(
        resolved, cache, build_sdists=build_sdists, reporter=reporter or NullReporter()
    )
    if inject:
        resolved = inject_files(resolved, inject)
    return resolved


def inject_files(resolved: ResolvedEnvironment, files: Sequence[Path]) -> ResolvedEnvironment:
    records = list(resolved.conda_records)
    wheels = list(resolved.pypi_packages)
    for raw in files:
        path = Path(raw).expanduser().resolve()
        if not path.is_file():
            raise PackError(f"--inject {raw}: no such file", "check the path")
        if path.name.endswith(CONDA_SUFFIXES):
            record = _conda_record(path)
            _check_subdir(record, resolved.platform)
            records = [r for r in records if r.name.normalized != record.name.normalized]
            records.append(record)
        elif path.name.endswith(".whl"):
            package = _wheel_package(path)
            wheels = [p for p in wheels if _norm(p.name) != _norm(package.name)]
            wheels.append(package)
        else:
            raise PackError(
                f"--inject {path.name}: not a conda package or a wheel",
                "inject .conda, .tar.bz2 or .whl files",
            )
    check_consistency(records)
    return resolved.with_packages(conda_records=tuple(records), pypi_packages=tuple(wheels))


def _conda_record(path: Path) -> rattler.RepoDataRecord:
    try:
        record = asyncio.run(rattler.RepoDataRecord.from_package_archive(path))
    except Exception as error:  # rattler raises its own exception types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PackError(
            f"--inject {path.name}: not a readable conda package ({first})",
            "pass a .conda or .tar.bz2 built by conda-build, rattler-build or pixi build",
        ) from error
    # the channel marks it as injected (in pack metadata and the pack's own pixi.lock)
    record.channel = INJECTED
    return record


def _check_subdir(record: rattler.RepoDataRecord, platform: str) -> None:
    if record.subdir not in (platform, "noarch"):
        raise PackError(
            f"--inject {record.file_name} is built for {record.subdir}, the environment is for "
            f"{platform}",
            f"inject a {platform} or noarch build",
        )


def check_consistency(records: Sequence[rattler.RepoDataRecord]) -> None:
    """Every depends/constrains of an injected record, and every one naming it, must hold."""
    by_name = {r.name.normalized: r for r in records}
    injected = [r for r in records if is_injected(r)]
    injected_names = {r.name.normalized for r in injected}
    for record in records:
        for spec_text, kind in _specs(record):
            spec = rattler.MatchSpec(spec_text)
            name = _spec_name(spec)
            if name is None or name.startswith("__"):
                continue
            injected_record = is_injected(record)
            if not injected_record and name not in injected_names:
                continue  # locked against locked: the solver already checked it
            target = by_name.get(name)
            if target is None:
                if kind == "depends":
                    raise PackError(
                        f"injected {_label(record)} depends on '{spec_text}', which the "
                        "environment does not have",
                        "add it to the environment and re-lock, or inject it too",
                    )
                continue
            if not spec.matches(target):
                first, second = (record, target) if injected_record else (target, record)
                verb = "depends on" if kind == "depends" else "constrains"
                raise PackError(
                    f"injected {_label(first)} conflicts with {_label(second)}: "
                    f"{_label(record)} {verb} '{spec_text}'",
                    "inject a build that fits the locked environment, or change the "
                    "environment's dependencies and re-lock",
                )


def _specs(record: rattler.RepoDataRecord) -> list[tuple[str, str]]:
    return [(d, "depends") for d in record.depends] + [(c, "constrains") for c in record.constrains]


def _spec_name(spec: rattler.MatchSpec) -> str | None:
    name = spec.name
    if name is None:
        return None
    normalized = getattr(name, "normalized", None)
    return str(normalized if normalized is not None else name).lower()


def _label(record: rattler.RepoDataRecord) -> str:
    return f"{record.name.normalized} {record.version} ({record.build})"


def _wheel_package(path: Path) -> PypiPackage:
    try:
        info = parse_wheel_filename(path.name)
    except ValueError as error:
        raise PackError(f"--inject {path.name}: not a valid wheel file name") from error
    with path.open("rb") as source:
        sha = hashlib.file_digest(source, "sha256").hexdigest()
    return PypiPackage(
        name=info.distribution.replace("_", "-"),
        version=str(info.version),
        location=path.as_uri(),
        sha256=sha,
        origin="inject",
    )


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")
