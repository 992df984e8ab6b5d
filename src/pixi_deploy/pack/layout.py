"""Lay out an environment from local archives: conda packages with py-rattler, wheels with PyPA
``installer``, then an ``activate.sh``.

The prefix is written at one path (a staging folder) but made for another (where it will live):
rattler's ``alternative_target_prefix`` patches prefix placeholders with the final path, wheels get
shebangs pointing at the final interpreter, and the activation script names the final path. That is
what lets the caller stage beside the target and rename into place atomically, and what lets an
environment be built on this machine for a path and platform that exist only on a cluster.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import rattler
from installer import install as install_wheel
from installer.destinations import SchemeDictionaryDestination
from installer.sources import WheelFile

from pixi_deploy import interrupts
from pixi_deploy.activation import ACTIVATE_NAME as ACTIVATE_NAME  # where callers find it
from pixi_deploy.activation import ManifestActivation, write_activate_script
from pixi_deploy.channels import redact
from pixi_deploy.errors import PackError, PixiDeployError, StoreError, store_error_from_os
from pixi_deploy.pack.archives import Archive, ArchiveSlice
from pixi_deploy.pack.confined import ConfinedFolder, UnsafeMember
from pixi_deploy.pack.direct import DeferredPayload, DirectResult, install_direct
from pixi_deploy.pack.fetch import DownloadCache, artifacts_of
from pixi_deploy.pack.guard import check_for_rattler, check_symlinks, harden_modes
from pixi_deploy.progress import Reporter
from pixi_deploy.scratch import discarded_on_exit
from pixi_deploy.workspace import ResolvedEnvironment

# no ':' either: it would split PATH (and other path lists) when the environment is activated
_SAFE_PATH = re.compile(r"[A-Za-z0-9/._+@%,=~-]+")


def lay_out_environment(
    resolved: ResolvedEnvironment,
    cache: DownloadCache,
    *,
    staging: Path,
    final: Path,
    reporter: Reporter,
    defer_payloads: bool = False,
    on_deferred: Callable[[DeferredPayload], object] | None = None,
) -> list[DeferredPayload]:
    """Fetch (or find in the cache) every archive of ``resolved`` and lay it out.

    Every archive is checked against the lock's sha256 where it is used, not only when it was
    downloaded, and files are written, never hard-linked from the cache: editing the cache
    afterwards cannot change a laid-out environment. rattler's own package cache is a folder
    beside ``staging`` for this one run, for the same reason (and so that a read-only cache
    works)."""
    artifacts = artifacts_of(resolved)
    cached = cache.fetch_all(artifacts, reporter)
    reporter.step(f"laying out {len(artifacts)} packages for {final} ({resolved.platform})")
    archives = {a.filename: ArchiveSlice.of_file(cached[a], a.sha256) for a in artifacts}
    # removed whatever ends the block, a signal during the removal included (it waits)
    with discarded_on_exit(
        lambda: staging.with_name(staging.name + ".rattler"),
        lambda folder: shutil.rmtree(folder, ignore_errors=True),
    ) as rattler_cache:
        return lay_out_prefix(
            list(resolved.conda_records),
            {a.filename: archives[a.filename] for a in artifacts if a.kind == "conda"},
            [archives[a.filename] for a in artifacts if a.kind == "pypi"],
            staging=staging,
            final=final,
            platform=resolved.platform,
            python_version=resolved.python_version,
            cache_dir=rattler_cache,
            environment=resolved.name,
            direct=True,
            defer_payloads=defer_payloads,
            on_deferred=on_deferred,
            activation=resolved.activation,
            needs=resolved.virtual_packages,
        )


def check_environment_path(path: str | Path) -> str:
    """Refuse paths that installed environments cannot live at.

    Conda packages embed their prefix verbatim in shebang lines (which end at the first space)
    and in shell scripts (where quotes, `$` and backticks change meaning when they run). Such a
    path would give an environment that breaks, or runs code, the first time it is used.
    """
    text = str(path)
    if not _SAFE_PATH.fullmatch(text):
        bad = sorted({c for c in text if not _SAFE_PATH.fullmatch(c)})
        shown = " ".join(repr(c) for c in bad)
        raise StoreError(
            f"the environment path {text!r} contains {shown}, which conda environments cannot "
            "live under (shebangs and scripts embed the path)",
            "pick a path made of letters, digits and / . _ - + @ % , =",
        )
    return text


def lay_out_prefix(
    records: Sequence[rattler.RepoDataRecord],
    archives: Mapping[str, Archive],
    wheels: Sequence[Archive],
    *,
    staging: Path,
    final: Path,
    platform: str,
    python_version: str | None,
    cache_dir: Path,
    environment: str = "default",
    direct: bool = False,
    defer_payloads: bool = False,
    on_deferred: Callable[[DeferredPayload], object] | None = None,
    activation: ManifestActivation | None = None,
    needs: Sequence[str] = (),
    installed: DirectResult | None = None,
) -> list[DeferredPayload]:
    """Install into ``staging`` an environment meant to live at ``final``.

    ``archives`` maps each record's file name to a local archive (an `ArchiveSlice` is checked
    against its sha256 where it is used); nothing is downloaded.
    ``direct`` writes what it can straight into the prefix (`pack.direct`); every caller does,
    since ``cache_dir`` (rattler's, for what it installs) is never kept: a kept one would share
    inodes between a cache and a deployment, and rattler does not re-check what it finds there.
    ``defer_payloads`` leaves out the bulk of what it can and says where it is (the remote
    store ships those payloads as they are, and the cluster extracts them); ``on_deferred`` is
    told of each such payload as soon as it is known. ``activation`` is the manifest's part of
    ``activate.sh`` (`pixi_deploy.activation`); ``needs`` the lock's virtual packages, which
    ``activate.sh`` checks on the machine it runs on (a job's compute node). ``installed``: what
    the direct installer already wrote into ``staging`` (`pack.direct.StreamedDirect`); only the
    rest is installed.
    """
    check_environment_path(final)
    missing = [r.file_name for r in records if r.file_name not in archives]
    if missing:
        raise PackError(f"archive {missing[0]} is missing", "re-create the pack")
    original_urls = [r.url for r in records]
    staging.mkdir(parents=True, exist_ok=True)
    try:
        if installed is not None:
            left, deferred, symlinks = installed.left, installed.deferred, installed.symlinks
        elif (direct or defer_payloads) and records:
            done = install_direct(
                records,
                archives,
                staging=staging,
                final=final,
                defer_payloads=defer_payloads,
                on_deferred=on_deferred,
            )
            left, deferred, symlinks = done.left, done.deferred, done.symlinks
        else:
            left, deferred, symlinks = list(records), [], {}
        if left:
            _guard(left, archives, symlinks, final, python_version)
        for record in left:  # rattler installs from these verified local files, not the web
            record.url = _local_file(archives[record.file_name], cache_dir).resolve().as_uri()
        if left:  # rattler finds the directly installed ones in conda-meta and leaves them be
            with (
                interrupts.deferred()
            ):  # else Ctrl-C would leave rattler writing into a removed folder
                asyncio.run(_install(list(records), staging, final, platform, cache_dir))
            _check_rattler_result(staging, left, final)
    except (OSError, PixiDeployError):
        raise
    except Exception as error:  # rattler's InstallerError wraps the OS error as text
        raise _install_error(error, staging, final) from error
    except BaseException as error:  # a Rust panic (pyo3's PanicException): never a traceback
        if type(error).__name__ != "PanicException":
            raise
        raise PackError(
            f"py-rattler failed while installing the environment for {final} ({error})"
        ) from None
    finally:
        for record, url in zip(records, original_urls, strict=True):
            record.url = url  # the caller's records are left as they were
    if wheels:
        local = [_local_file(wheel, cache_dir) for wheel in wheels]
        _install_wheels(local, staging, final, python_version)
    urls = {r.file_name: url for r, url in zip(records, original_urls, strict=True)}
    _scrub_link_sources(staging, left, urls)  # the direct installer wrote clean records
    # rattler tags the prefix as a cache folder; backup tools honouring CACHEDIR.TAG (borg,
    # restic, `tar --exclude-caches`) would then skip a deployed environment entirely.
    (staging / "CACHEDIR.TAG").unlink(missing_ok=True)
    write_activate_script(staging, final, environment, platform, activation, needs)
    return deferred


def _local_file(archive: Archive, cache_dir: Path) -> Path:
    return (
        archive.local_file(cache_dir / "archives") if isinstance(archive, ArchiveSlice) else archive
    )


def _guard(
    records: Sequence[rattler.RepoDataRecord],
    archives: Mapping[str, Archive],
    direct_symlinks: Mapping[str, str],
    final: Path,
    python_version: str | None,
) -> None:
    """Nothing reaches rattler that the direct path would refuse (`pack.guard`)."""
    symlinks = dict(direct_symlinks)
    owners: dict[str, str] = {}
    for record in records:
        found = check_for_rattler(archives[record.file_name], record.file_name)
        if str(record.noarch) == "python" or getattr(record.noarch, "python", False) is True:
            found = {_noarch_python_name(k, python_version): v for k, v in found.items()}
        symlinks.update(found)
        owners.update(dict.fromkeys(found, record.file_name))
    check_symlinks(symlinks, str(final), owners)


def _noarch_python_name(name: str, python_version: str | None) -> str:
    """Where rattler puts a noarch python package's file: site-packages and python-scripts move."""
    if name.startswith("site-packages/") and python_version:
        return f"lib/python{python_version}/{name}"
    if name.startswith("python-scripts/"):
        return "bin/" + name.removeprefix("python-scripts/")
    return name


def _check_rattler_result(
    staging: Path, installed: Sequence[rattler.RepoDataRecord], final: Path
) -> None:
    """What rattler laid out, as the direct path would have: no world-writable or setuid file,
    and every symlink of the prefix inside it."""
    meta = staging / "conda-meta"
    names: list[str] = []
    for record in installed:
        record_file = meta / f"{record.name.normalized}-{record.version}-{record.build}.json"
        if record_file.is_file():
            paths = json.loads(record_file.read_text()).get("paths_data", {}).get("paths", [])
            names += [e["_path"] for e in paths if isinstance(e, dict) and "_path" in e]
    harden_modes(str(staging), names)
    symlinks: dict[str, str] = {}
    owners: dict[str, str] = {}
    with ConfinedFolder(staging) as tree:
        for record_file in meta.glob("*.json"):
            data = json.loads(record_file.read_text())
            for entry in data.get("paths_data", {}).get("paths", []):
                if isinstance(entry, dict) and entry.get("path_type") == "softlink":
                    try:
                        symlinks[entry["_path"]] = tree.readlink(entry["_path"])
                    except (OSError, UnsafeMember):
                        continue
                    owners[entry["_path"]] = str(data.get("fn", record_file.stem))
    check_symlinks(symlinks, str(final), owners)


async def _install(
    records: list[rattler.RepoDataRecord],
    staging: Path,
    final: Path,
    platform: str,
    cache_dir: Path,
) -> None:
    await rattler.install(
        records,
        target_prefix=staging,
        cache_dir=cache_dir,
        platform=rattler.Subdir(platform),
        alternative_target_prefix=final,
        show_progress=False,
        execute_link_scripts=False,
    )


def _install_error(error: Exception, staging: Path, final: Path) -> Exception:
    """Name the cause: rattler reports some full-disk failures only as a broken JSON file."""
    text = " ".join(str(error).split())
    if _nearly_full(staging):
        return store_error_from_os(OSError(errno.ENOSPC, "full"), final)
    for marker, code in (
        ("No space left on device", errno.ENOSPC),
        ("Permission denied", errno.EACCES),
        ("Read-only file system", errno.EROFS),
    ):
        if marker in text:
            return store_error_from_os(OSError(code, marker), final)
    return PackError(f"installing the environment for {final} failed: {text[:300]}")


def _nearly_full(path: Path) -> bool:
    try:
        stats = os.statvfs(path)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < 64 * 1024


def _install_wheels(
    wheels: Sequence[Path], staging: Path, final: Path, python_version: str | None
) -> None:
    if python_version is None:
        raise PackError(
            "the environment has PyPI wheels but no conda 'python' package to install them into",
            "add python to the environment's dependencies and re-lock",
        )
    site = f"lib/python{python_version}/site-packages"
    scheme = {
        "purelib": str(staging / site),
        "platlib": str(staging / site),
        "headers": str(staging / f"include/python{python_version}"),
        "scripts": str(staging / "bin"),
        "data": str(staging),
    }
    destination = SchemeDictionaryDestination(
        scheme,
        interpreter=str(final / "bin" / "python"),
        script_kind="posix",
        bytecode_optimization_levels=(),
    )
    for wheel in wheels:
        try:
            with WheelFile.open(wheel) as source:
                install_wheel(
                    source, destination, additional_metadata={"INSTALLER": b"pixi-deploy\n"}
                )
        except FileExistsError as error:
            raise PackError(
                f"wheel {wheel.name} overwrites {error.filename} from a conda package",
                "the lock mixes a conda and a PyPI copy of one package; re-lock with pixi",
            ) from error
        except (ValueError, zipfile.BadZipFile) as error:  # installer refuses paths outside
            raise UnsafeMember(
                f"wheel {wheel.name}: {' '.join(str(error).split())[:200]}"
            ) from None


def _scrub_link_sources(
    prefix: Path, installed: Sequence[rattler.RepoDataRecord], urls: Mapping[str, str]
) -> None:
    """conda-meta records the build machine's cache path (link.source, extracted_package_dir)
    and the local archive rattler installed from (url); they mean nothing where the environment
    lands, so drop the paths and put back the lock's URL rather than ship local paths."""
    meta = prefix / "conda-meta"
    for record in installed:
        record_file = meta / f"{record.name.normalized}-{record.version}-{record.build}.json"
        if not record_file.is_file():
            continue
        data = json.loads(record_file.read_text())
        link = data.get("link")
        if isinstance(link, dict) and "source" in link:
            link["source"] = ""
        if "extracted_package_dir" in data:
            data["extracted_package_dir"] = ""
        if data.get("fn") in urls:
            data["url"] = redact(urls[data["fn"]])
        if isinstance(data.get("channel"), str):
            data["channel"] = redact(data["channel"])
        # no indent: json's C encoder only runs without it (a 300-package env: 1.3 s -> 0.1 s)
        record_file.write_text(json.dumps(data))
