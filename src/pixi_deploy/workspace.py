"""Find a pixi workspace, read its manifest and pixi.lock, and resolve one environment + platform.

This is the first room of the pipeline: everything later (packing, stores, jobs, images) starts
from a :class:`ResolvedEnvironment`. The lock is read with py-rattler, so every lock format pixi has
written (versions 4 to 7) is understood the way pixi understands it. The manifest is read with
tomli, which also accepts TOML 1.1 (multi-line inline tables) that pixi allows and tomllib rejects.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import rattler
import tomli

from pixi_deploy.activation import ManifestActivation, read_manifest_activation
from pixi_deploy.channels import redact
from pixi_deploy.errors import WorkspaceError

MANIFEST_NAMES = ("pixi.toml", "pyproject.toml")
LOCK_NAME = "pixi.lock"
DEFAULT_ENVIRONMENT = "default"
#: The channel recorded for conda packages added with ``--inject`` (rattler wants a URL; the
#: ``.invalid`` domain never resolves, so nothing is ever fetched from it).
INJECTED = "https://pixi-deploy.invalid/injected"
HASH_PATH_LENGTH = 16  # hex characters of the lock hash used in deployment paths
#: pixi's own rule for environment names (pixi_manifest's EnvironmentName).
_ENVIRONMENT_NAME = re.compile(r"[a-z0-9-]+")
_PLATFORM = re.compile(r"noarch|[a-z0-9]+-[a-z0-9]+")
_FILE_NAME_PART = re.compile(r"[^A-Za-z0-9._+-]")


def check_environment_name(name: object, where: str = "the environment name") -> str:
    """pixi's rule: lowercase letters, digits and dashes. Environment names end up in file
    names, activation scripts and image labels, so nothing else gets in."""
    if not isinstance(name, str) or not _ENVIRONMENT_NAME.fullmatch(name):
        raise WorkspaceError(
            f"{where} {name!r} is not a valid pixi environment name",
            "use only lowercase letters, digits and dashes, as pixi does",
        )
    return name


def check_platform(platform: object, where: str = "the platform") -> str:
    if not isinstance(platform, str) or len(platform) > 32 or not _PLATFORM.fullmatch(platform):
        raise WorkspaceError(
            f"{where} {platform!r} is not a conda platform", "e.g. linux-64 or linux-aarch64"
        )
    return platform


def file_name_part(text: str) -> str:
    """``text`` fit for one component of a file name: only ``A-Za-z0-9._+-`` (others become
    ``_``) and no leading dot, so a default output name never leaves the current folder."""
    return _FILE_NAME_PART.sub("_", text).lstrip(".") or "_"


@dataclass(frozen=True)
class PypiPackage:
    """A PyPI package as locked: a wheel/sdist URL with its sha256, or a local path dependency."""

    name: str
    version: str
    location: str
    sha256: str | None
    editable: bool = False
    #: What makes this package part of the environment's identity when its archive's sha256 does
    #: not: the content hash of a wheel built at pack time from a path dependency.
    identity: str | None = None
    #: Where the package came from when not straight from the lock: "path:<location>" (built from
    #: a path dependency), "sdist:<file>" (built from an index sdist) or "inject".
    origin: str = ""

    @property
    def is_path(self) -> bool:
        return "://" not in self.location or self.location.startswith("file://")

    @property
    def filename(self) -> str:
        return self.location.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class SourcePackage:
    """A package pixi-build builds from the workspace itself (``conda: <path>`` in the lock).

    No archive exists for it until someone builds one, so it cannot be shipped as locked: a
    built ``.conda`` of the same name passed with ``--inject`` takes its place."""

    name: str
    version: str
    build: str
    location: str  # the source folder, relative to the workspace ("." for the workspace)

    def describe(self) -> str:
        return f"{self.name} ({self.location})"


def refuse_unbuilt_sources(resolved: ResolvedEnvironment) -> None:
    """Nothing can ship an environment whose pixi-build packages have no built archive: say
    which, and the two ways out, before anything is fetched or moved."""
    if not resolved.source_packages:
        return
    names = ", ".join(p.describe() for p in resolved.source_packages)
    count = len(resolved.source_packages)
    raise WorkspaceError(
        f"environment '{resolved.name}' ({resolved.platform}) has {count} pixi-build source "
        f"package{'s' if count > 1 else ''} with no built archive: {names}",
        "build them (`pixi publish --target-dir DIR` or rattler-build) and pass each .conda "
        "with --inject",
    )


@dataclass(frozen=True)
class ResolvedEnvironment:
    """Exactly what the lock says one environment needs on one platform."""

    workspace: Workspace
    name: str
    platform: str
    channels: tuple[str, ...]
    conda_records: tuple[rattler.RepoDataRecord, ...]
    pypi_packages: tuple[PypiPackage, ...]
    lock_hash: str
    virtual_packages: tuple[str, ...] = field(default=())
    #: pixi-build source packages still to be built (see `SourcePackage`).
    source_packages: tuple[SourcePackage, ...] = field(default=())
    #: The manifest's part of activate.sh; it is part of the hash (see pixi_deploy.activation).
    activation: ManifestActivation | None = None

    @property
    def short_hash(self) -> str:
        return self.lock_hash[:HASH_PATH_LENGTH]

    @property
    def python_version(self) -> str | None:
        """major.minor of the conda `python` package, where PyPI wheels get installed."""
        for record in self.conda_records:
            if record.name.normalized == "python":
                return ".".join(str(record.version).split(".")[:2])
        return None

    def summary(self) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "conda_packages": len(self.conda_records),
            "pypi_packages": len(self.pypi_packages),
            "hash": self.lock_hash,
        }
        if self.source_packages:
            summary["source_packages"] = [
                {"name": p.name, "version": p.version, "build": p.build, "path": p.location}
                for p in self.source_packages
            ]
        path_deps = [p for p in self.pypi_packages if p.is_path and not p.origin]
        if path_deps:
            # built into wheels at pack/deploy time; their content then joins the hash
            editable = self.workspace.editable_pypi_dependencies()
            summary["path_dependencies"] = [
                {
                    "name": p.name,
                    "path": p.location,
                    "editable": p.editable or _norm_pypi(p.name) in editable,
                }
                for p in path_deps
            ]
        return summary

    def with_packages(
        self,
        conda_records: tuple[rattler.RepoDataRecord, ...] | None = None,
        pypi_packages: tuple[PypiPackage, ...] | None = None,
    ) -> ResolvedEnvironment:
        """A copy with other packages (built path dependencies, injected files), re-hashed. A
        source package is dropped once a conda record of its name is among the packages."""
        records = tuple(self.conda_records if conda_records is None else conda_records)
        names = {r.name.normalized for r in records}
        sources = tuple(p for p in self.source_packages if p.name not in names)
        pypi = tuple(self.pypi_packages if pypi_packages is None else pypi_packages)
        records = tuple(sorted(records, key=lambda r: r.name.normalized))
        pypi = tuple(sorted(pypi, key=lambda p: p.name.lower()))
        return replace(
            self,
            conda_records=records,
            pypi_packages=pypi,
            source_packages=sources,
            lock_hash=lock_hash(self.platform, list(records), list(pypi), self.activation),
            virtual_packages=virtual_package_needs(
                list(records), self.workspace.system_requirements(self.name), self.platform
            ),
        )

    def provenance(self) -> dict[str, Any]:
        """Packages that did not come straight from the lock (for pack metadata)."""
        added: dict[str, Any] = {}
        built = [p for p in self.pypi_packages if p.origin.startswith(("path:", "sdist:"))]
        if built:
            added["path_dependencies"] = [
                {"name": p.name, "version": p.version, "source": p.origin, "identity": p.identity}
                for p in built
            ]
        injected = [p.filename for p in self.pypi_packages if p.origin == "inject"]
        injected += [r.file_name for r in self.conda_records if is_injected(r)]
        if injected:
            added["injected"] = sorted(injected)
        return added


def find_manifest(manifest_path: Path | None = None, cwd: Path | None = None) -> Path:
    """Locate the manifest the way pixi does.

    An explicit path may be the file or its folder; otherwise the current folder and then its
    parents are searched. In one folder pixi.toml wins over pyproject.toml, and a pyproject.toml
    counts only when it has a ``[tool.pixi]`` table.
    """
    if manifest_path is not None:
        path = Path(manifest_path).expanduser()
        if path.is_dir():
            found = _manifest_in(path)
            if found is None:
                raise WorkspaceError(
                    f"no pixi.toml or pyproject.toml with [tool.pixi] in {path}",
                    "pass --manifest-path pointing at the workspace's manifest",
                )
            return found.resolve()
        if not path.is_file():
            raise WorkspaceError(f"manifest {path} does not exist", "check --manifest-path")
        return path.resolve()
    start = (cwd or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        found = _manifest_in(folder)
        if found is not None:
            return found
    raise WorkspaceError(
        f"no pixi workspace found in {start} or any parent folder",
        "run inside a pixi workspace or pass --manifest-path",
    )


def _manifest_in(folder: Path) -> Path | None:
    pixi_toml = folder / "pixi.toml"
    if pixi_toml.is_file():
        return pixi_toml
    pyproject = folder / "pyproject.toml"
    if pyproject.is_file():
        try:
            data = tomli.loads(pyproject.read_text(encoding="utf-8"))
        except (tomli.TOMLDecodeError, UnicodeDecodeError):
            return None
        if "pixi" in data.get("tool", {}):
            return pyproject
    return None


class Workspace:
    """A pixi workspace on disk: its manifest (parsed) and its lock file (read lazily)."""

    def __init__(self, manifest_path: Path) -> None:
        self.manifest_path = manifest_path
        self.root = manifest_path.parent
        self.lock_path = self.root / LOCK_NAME
        self._raw = _read_toml(manifest_path)
        if manifest_path.name == "pyproject.toml":
            self._pixi = self._raw.get("tool", {}).get("pixi", {})
        else:
            self._pixi = self._raw

    # -- manifest ---------------------------------------------------------------------------
    @property
    def _workspace_table(self) -> dict[str, Any]:
        table = self._pixi.get("workspace") or self._pixi.get("project") or {}
        return table if isinstance(table, dict) else {}

    @property
    def name(self) -> str:
        """pixi takes any string; a control character (a newline) is refused here, and file
        names made from it go through `file_name_part`."""
        project = self._raw.get("project")
        name = self._workspace_table.get("name") or (
            project.get("name") if isinstance(project, dict) else None
        )
        if name is None or name == "":
            return self.root.name
        if not isinstance(name, str) or not name.isprintable():
            raise WorkspaceError(
                f"the workspace name {name!r} in {self.manifest_path} is not a printable string",
                "give [workspace] a plain name",
            )
        return name

    @property
    def pixi_table(self) -> dict[str, Any]:
        """The manifest's pixi part: all of pixi.toml, or pyproject.toml's ``[tool.pixi]``."""
        return self._pixi

    @property
    def config(self) -> dict[str, Any]:
        """Defaults from ``[tool.pixi-deploy]`` (in pixi.toml or pyproject.toml), type-checked:
        ``environment``, ``platform``, ``base`` and ``format`` are strings."""
        tool = self._raw.get("tool", {})
        table = tool.get("pixi-deploy", {}) if isinstance(tool, dict) else {}
        if not isinstance(table, dict):
            raise WorkspaceError(
                f"[tool.pixi-deploy] in {self.manifest_path} is not a table",
                "write it as a TOML table: [tool.pixi-deploy]",
            )
        for key in ("environment", "platform", "base", "format"):
            if key in table and not isinstance(table[key], str):
                raise WorkspaceError(
                    f"[tool.pixi-deploy] {key} = {table[key]!r} in {self.manifest_path} is not "
                    "a string",
                    f'write it in quotes, e.g. {key} = "..."',
                )
        return dict(table)

    def declared_environments(self) -> dict[str, list[str]]:
        """Environment name -> platforms the manifest declares for it (features may narrow them)."""
        platforms = [str(p) for p in self._workspace_table.get("platforms", [])]
        features = self._pixi.get("feature", {}) or {}
        declared = {DEFAULT_ENVIRONMENT: list(platforms)}
        for env_name, spec in (self._pixi.get("environments") or {}).items():
            if isinstance(spec, list):
                names, no_default = spec, False
            elif isinstance(spec, dict):
                names = spec.get("features", [])
                no_default = bool(spec.get("no-default-feature", False))
            else:
                continue
            env_platforms = list(platforms)
            for feature_name in names:
                feature = features.get(feature_name, {}) or {}
                if "platforms" in feature:
                    allowed = set(feature["platforms"])
                    env_platforms = [p for p in env_platforms if p in allowed]
            del no_default  # the default feature never narrows platforms further
            declared[check_environment_name(env_name, "[environments]")] = env_platforms
        return declared

    def editable_pypi_dependencies(self) -> set[str]:
        """Normalized names of the manifest's ``editable = true`` PyPI dependencies (any feature)."""
        tables = [self._pixi.get("pypi-dependencies") or {}]
        for feature in (self._pixi.get("feature") or {}).values():
            if isinstance(feature, dict):
                tables.append(feature.get("pypi-dependencies") or {})
        return {
            _norm_pypi(str(name))
            for table in tables
            if isinstance(table, dict)
            for name, spec in table.items()
            if isinstance(spec, dict) and spec.get("editable") is True
        }

    def system_requirements(self, environment: str = DEFAULT_ENVIRONMENT) -> list[dict[str, Any]]:
        """The ``[system-requirements]`` tables that apply to ``environment``: the default
        feature's (unless it has ``no-default-feature``) and those of its features."""
        features = self._pixi.get("feature", {}) or {}
        spec = (self._pixi.get("environments") or {}).get(environment)
        names: list[str] = []
        with_default = True
        if isinstance(spec, list):
            names = [str(n) for n in spec]
        elif isinstance(spec, dict):
            names = [str(n) for n in spec.get("features", [])]
            with_default = not spec.get("no-default-feature", False)
        tables = [self._pixi.get("system-requirements")] if with_default else []
        tables += [(features.get(n) or {}).get("system-requirements") for n in names]
        return [t for t in tables if isinstance(t, dict)]

    # -- lock -------------------------------------------------------------------------------
    @cached_property
    def lock(self) -> rattler.LockFile:
        if not self.lock_path.is_file():
            raise WorkspaceError(
                f"no pixi.lock next to {self.manifest_path.name} in {self.root}",
                "run `pixi lock` (or `pixi install`) in the workspace first",
            )
        try:
            return rattler.LockFile.from_path(self.lock_path)
        except Exception as error:  # rattler raises its own parse errors
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise WorkspaceError(
                f"cannot read {self.lock_path}: {first_line}",
                "regenerate it with `pixi lock`",
            ) from error

    def locked_environments(self) -> dict[str, list[str]]:
        return {
            name: sorted(str(p) for p in env.platforms()) for name, env in self.lock.environments()
        }

    def environment_names(self) -> list[str]:
        names = set(self.declared_environments()) | set(self.locked_environments())
        return sorted(names, key=lambda n: (n != DEFAULT_ENVIRONMENT, n))

    def missing_from_lock(self) -> list[str]:
        """Human-readable problems: what the manifest declares but the lock does not have."""
        locked = self.locked_environments()
        problems = []
        for env_name, platforms in self.declared_environments().items():
            if env_name not in locked:
                problems.append(f"environment '{env_name}' is not in pixi.lock")
                continue
            if not locked[env_name]:
                continue  # an environment without dependencies: pixi locks no platform for it
            for platform in platforms:
                if platform not in locked[env_name]:
                    problems.append(
                        f"platform '{platform}' of environment '{env_name}' is not in pixi.lock"
                    )
        return problems

    def resolve(
        self, environment: str | None = None, platform: str | None = None
    ) -> ResolvedEnvironment:
        env_name = check_environment_name(
            environment or self.config.get("environment") or DEFAULT_ENVIRONMENT
        )
        lock_env = self.lock.environment(env_name)
        if lock_env is None:
            known = ", ".join(self.environment_names()) or "none"
            raise WorkspaceError(
                f"unknown environment '{env_name}' (known: {known})",
                "pick one with -e/--environment, or run `pixi lock` if it is new",
            )
        target = check_platform(platform or self.config.get("platform") or current_platform())
        lock_platform = next((p for p in lock_env.platforms() if str(p) == target), None)
        locked = sorted(str(p) for p in lock_env.platforms())
        if lock_platform is None and locked:
            declared = self.declared_environments().get(env_name, [])
            why = "the manifest declares it but " if target in declared else ""
            raise WorkspaceError(
                f"platform '{target}' of environment '{env_name}': {why}pixi.lock has no "
                f"packages for it (locked: {', '.join(locked)})",
                f"add it with `pixi workspace platform add {target}` and run `pixi lock`"
                if not why
                else "run `pixi lock`",
            )
        records: list[rattler.RepoDataRecord] = []
        pypi: list[PypiPackage] = []
        sources: list[SourcePackage] = []
        if lock_platform is not None:
            records = list(lock_env.conda_repodata_records_for_platform(lock_platform) or [])
            pypi = [_pypi(p) for p in lock_env.pypi_packages_for_platform(lock_platform) or []]
            sources = _source_packages(lock_env, lock_platform)
        records.sort(key=lambda r: r.name.normalized)
        pypi.sort(key=lambda p: p.name.lower())
        activation = self.activation(env_name, target)
        return ResolvedEnvironment(
            workspace=self,
            name=env_name,
            platform=target,
            channels=tuple(str(c) for c in lock_env.channels()),
            conda_records=tuple(records),
            pypi_packages=tuple(pypi),
            lock_hash=lock_hash(target, records, pypi, activation),
            virtual_packages=virtual_package_needs(
                records, self.system_requirements(env_name), target
            ),
            source_packages=tuple(sorted(sources, key=lambda p: p.name)),
            activation=activation,
        )

    def activation(self, environment: str, platform: str) -> ManifestActivation:
        """The manifest's activation of ``environment`` on ``platform`` (its scripts read)."""
        declared = self.declared_environments().get(environment)
        return read_manifest_activation(
            self._pixi,
            self.root,
            project=self.name,
            manifest_name=self.manifest_path.name,
            environment=environment,
            platform=platform,
            platforms=declared if declared is not None else [platform],
        )

    def describe(self) -> dict[str, Any]:
        """What `inspect --json` prints: environment -> platform -> counts and hash, + channels."""
        result: dict[str, Any] = {
            "workspace": self.name,
            "manifest_path": str(self.manifest_path),
            "environments": {},
            "problems": self.missing_from_lock(),
        }
        for env_name, platforms in self.locked_environments().items():
            lock_env = self.lock.environment(env_name)
            entry: dict[str, Any] = {
                "channels": [redact(str(c)) for c in lock_env.channels()] if lock_env else [],
                "platforms": {},
            }
            for platform in platforms:
                resolved = self.resolve(env_name, platform)
                entry["platforms"][platform] = resolved.summary()
                if resolved.source_packages:
                    names = ", ".join(p.describe() for p in resolved.source_packages)
                    result["problems"].append(
                        f"environment '{env_name}' ({platform}) has pixi-build source packages "
                        f"that must be built before it can be packed or deployed: {names}"
                    )
                try:
                    if resolved.activation is not None:
                        resolved.activation.check(self.root)
                except WorkspaceError as error:
                    problem = f"environment '{env_name}': {error.message}"
                    if problem not in result["problems"]:
                        result["problems"].append(problem)
            result["environments"][env_name] = entry
        return result


def load_workspace(manifest_path: Path | None = None, cwd: Path | None = None) -> Workspace:
    return Workspace(find_manifest(manifest_path, cwd))


def current_platform() -> str:
    return str(rattler.Subdir.current())


def lock_hash(
    platform: str,
    records: list[rattler.RepoDataRecord],
    pypi: list[PypiPackage],
    activation: ManifestActivation | None = None,
) -> str:
    """sha256 of exactly the locked records: content, not where they came from or when; and of
    the manifest's activation, which activate.sh holds (project name, environment, platforms,
    [activation] env and the scripts' contents), so two projects never share an environment
    whose activate.sh is only right for one of them.

    A conda record is identified by its archive's sha256 (md5 for old locks without one), so the
    same environment locked against a mirror or a local copy of a channel hashes the same.
    """
    lines = [f"platform {platform}"]
    if activation is not None:
        lines.append(f"activation {activation.identity()}")
    for r in records:
        digest = _hex(r.sha256) or _hex(r.md5) or str(r.url)
        lines.append(f"conda {r.name.normalized} {r.version} {r.build} {r.subdir} {digest}")
    for p in pypi:
        lines.append(f"pypi {p.name.lower()} {p.version} {p.identity or p.sha256 or p.location}")
    lines.sort()
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


#: pixi's ``[system-requirements]`` keys, the virtual package each stands for, and the
#: platforms it applies to (``macos`` means nothing to a linux-64 environment).
SYSTEM_REQUIREMENTS = {
    "linux": ("__linux", ("linux",)),
    "libc": ("__glibc", ("linux",)),
    "cuda": ("__cuda", ("linux", "win")),
    "macos": ("__osx", ("osx",)),
}


def virtual_package_needs(
    records: list[rattler.RepoDataRecord],
    system_requirements: list[dict[str, Any]],
    platform: str = "",
) -> tuple[str, ...]:
    """The `__cuda`, `__glibc`, ... dependencies the target machine must satisfy: the locked
    packages' own, and the manifest's ``[system-requirements]`` that apply to ``platform``."""
    needs = {d for r in records for d in r.depends if d.startswith("__")}
    system = platform.split("-", 1)[0]
    for table in system_requirements:
        for key, value in table.items():
            if key not in SYSTEM_REQUIREMENTS:
                continue
            package, systems = SYSTEM_REQUIREMENTS[key]
            if system and system not in systems:
                continue
            if isinstance(value, dict):  # libc = { family = "glibc", version = "2.28" }
                package = f"__{str(value.get('family') or 'glibc').lower()}"
                value = value.get("version")
            needs.add(f"{package} >={value}" if value else package)
    return tuple(sorted(needs))


def git_state(folder: Path) -> dict[str, Any]:
    """The workspace's git commit and whether the tree has uncommitted changes (None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(status.strip())}


def _source_packages(lock_env: Any, platform: Any) -> list[SourcePackage]:
    """The lock's ``conda: <path>`` records, which rattler's repodata records leave out."""
    found = []
    for package in lock_env.packages(platform) or []:
        if not isinstance(package, rattler.CondaLockedSourcePackage):
            continue
        record = package.package_record
        found.append(
            SourcePackage(
                name=str(package.name),
                version=str(package.version),
                build=str(record.build) if record is not None else "",
                location=str(package.location),
            )
        )
    return found


def _pypi(package: Any) -> PypiPackage:
    sha = None
    try:  # path dependencies carry no hashes; rattler then raises on access
        sha = _hex(package.hashes.sha256)
    except AttributeError:
        sha = None
    return PypiPackage(
        name=str(package.name),
        version=str(package.version),
        location=str(package.location),
        sha256=sha,
        editable=bool(getattr(package, "editable", False)),
    )


def is_injected(record: rattler.RepoDataRecord) -> bool:
    """Whether a conda record was added with ``--inject`` rather than locked."""
    return str(record.channel or "").rstrip("/") == INJECTED


def _norm_pypi(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _hex(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.hex() if isinstance(value, bytes) else str(value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomli.loads(path.read_text(encoding="utf-8"))
    except tomli.TOMLDecodeError as error:
        raise WorkspaceError(f"cannot parse {path}: {error}", "fix the TOML syntax") from error
    except UnicodeDecodeError as error:
        raise WorkspaceError(
            f"{path} is not UTF-8 text (byte {error.start} is invalid)",
            "save the manifest as UTF-8",
        ) from None
    except OSError as error:
        raise WorkspaceError(f"cannot read {path}: {error.strerror}") from error


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False)
