"""`activate.sh`: what `pixi shell-hook` sets for one environment and platform, as one POSIX file.

pixi activates in this order (rattler_shell's Activator, as pixi builds it): ``PATH`` gets the
environment's ``bin``, then ``CONDA_SHLVL`` and ``CONDA_PREFIX``; then the packages' variables
(``etc/conda/env_vars.d``, ``conda-meta/state``) and pixi's own (``PIXI_PROJECT_*``,
``CONDA_DEFAULT_ENV``, ``PIXI_ENVIRONMENT_*``, ``PIXI_PROMPT``); then the packages'
``activate.d`` scripts and the manifest's ``[activation] scripts``; and last the manifest's
``[activation] env``. The manifest's parts are merged from the environment's features in
pixi's order (see :mod:`pixi_deploy.manifest`): scripts feature by feature (default feature
last), each feature's most specific target replacing its generic list; env values from the most
specific target over the generic one, and from an earlier feature over a later one.

The manifest's activation is part of the environment's identity (its hash), because
``activate.sh`` is written into the environment. Scripts are files of the project: they are
sourced from ``$PIXI_PROJECT_ROOT`` (a job's copy of the code snapshot on a cluster), and a copy
of each travels inside the environment under :data:`CARRIED_DIR`, which is where
``PIXI_PROJECT_ROOT`` points when nothing else sets it, so an environment unpacked where the
project is not still activates fully.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pixi_deploy.errors import PackError, WorkspaceError
from pixi_deploy.manifest import DEFAULT_FEATURE, environment_features, target_tables
from pixi_deploy.target import shell_check

ACTIVATE_NAME = "activate.sh"
#: Where an environment carries the activation scripts its manifest names (relative to it).
CARRIED_DIR = "share/pixi-deploy/project"
PACK_EXTRA_KEY = "activation"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MANIFESTS = ("pixi.toml", "pyproject.toml")


@dataclass(frozen=True)
class ActivationScript:
    """One ``[activation] scripts`` entry: its path in the project and its content."""

    path: str  # relative to the workspace root, POSIX separators
    content: bytes | None = field(repr=False)  # None: the file does not exist (see check())

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest() if self.content is not None else "missing"


@dataclass(frozen=True)
class ManifestActivation:
    """What the manifest adds to an environment's activation, for one platform."""

    project: str
    environment: str
    platforms: tuple[str, ...]
    manifest_name: str
    env: tuple[tuple[str, str], ...] = ()
    scripts: tuple[ActivationScript, ...] = ()

    @property
    def conda_default_env(self) -> str:
        """pixi's CONDA_DEFAULT_ENV: the project's name, plus ``:<env>`` for other environments."""
        if self.environment == DEFAULT_FEATURE:
            return self.project
        return f"{self.project}:{self.environment}"

    def check(self, root: Path | str = "the workspace") -> None:
        """Refuse an activation whose scripts are not all there: at deploy time, not as a
        silent skip on the cluster."""
        for script in self.scripts:
            if script.content is None:
                raise WorkspaceError(
                    f"the activation script {script.path} that the manifest names does not "
                    f"exist in {root}",
                    "create it, or remove it from [activation] scripts",
                )

    def identity(self) -> str:
        """The text folded into the environment's hash (scripts by content)."""
        return json.dumps(
            {
                "project": self.project,
                "environment": self.environment,
                "platforms": list(self.platforms),
                "manifest": self.manifest_name,
                "env": [list(pair) for pair in self.env],
                "scripts": [[s.path, s.sha256] for s in self.scripts],
            },
            sort_keys=True,
        )

    def to_pack_extra(self) -> dict[str, Any]:
        """For a pack's metadata: everything unpack needs, scripts included (base64)."""
        self.check()
        return {
            "project": self.project,
            "environment": self.environment,
            "platforms": list(self.platforms),
            "manifest": self.manifest_name,
            "env": [list(pair) for pair in self.env],
            "scripts": [
                {
                    "path": s.path,
                    "sha256": s.sha256,
                    "content": base64.b64encode(s.content or b"").decode("ascii"),
                }
                for s in self.scripts
            ],
        }

    @classmethod
    def from_pack_extra(cls, extra: dict[str, Any]) -> ManifestActivation | None:
        """Read it back from a pack's metadata, which is hostile input: every field checked."""
        data = extra.get(PACK_EXTRA_KEY) if isinstance(extra, dict) else None
        if data is None:
            return None
        try:
            scripts = []
            for entry in data["scripts"]:
                path = check_script_path(str(entry["path"]), PackError)
                content = base64.b64decode(entry["content"], validate=True)
                script = ActivationScript(path, content)
                if script.sha256 != entry["sha256"]:
                    raise PackError(
                        f"the pack's activation script {path} does not match its sha256",
                        "re-create the pack",
                    )
                scripts.append(script)
            env = tuple((check_env_name(str(k), PackError), str(v)) for k, v in data["env"])
            manifest = str(data["manifest"])
            if manifest not in _MANIFESTS:
                raise PackError(f"the pack names an unknown manifest {manifest!r}")
            return cls(
                project=str(data["project"]),
                environment=str(data["environment"]),
                platforms=tuple(str(p) for p in data["platforms"]),
                manifest_name=manifest,
                env=env,
                scripts=tuple(scripts),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as error:
            raise PackError(
                f"the pack's activation metadata is malformed ({error})", "re-create the pack"
            ) from error


def read_manifest_activation(
    pixi: dict[str, Any],
    root: Path,
    *,
    project: str,
    manifest_name: str,
    environment: str,
    platform: str,
    platforms: list[str],
) -> ManifestActivation:
    """The manifest's activation for ``environment`` on ``platform``, its scripts read from
    ``root``. A script outside the workspace is an error at once; one that does not exist is
    recorded as such (``inspect`` lists it as a problem) and refused by
    :meth:`ManifestActivation.check` when the environment is prepared, before anything is
    shipped."""
    features = environment_features(pixi, environment)
    names: list[str] = []
    for _, feature in features:
        for table in target_tables(feature, platform):
            activation = table.get("activation")
            if isinstance(activation, dict) and activation.get("scripts") is not None:
                names += [str(s) for s in activation["scripts"]]
                break  # the most specific target's list replaces the generic one
    env: dict[str, str] = {}
    for _, feature in reversed(features):  # an earlier feature wins; the default one is last
        feature_env: dict[str, str] = {}
        for table in target_tables(feature, platform):
            activation = table.get("activation")
            values = activation.get("env") if isinstance(activation, dict) else None
            for key, value in (values or {}).items():
                feature_env.setdefault(check_env_name(str(key), WorkspaceError), str(value))
        env.update(feature_env)
    scripts = tuple(_read_script(root, name) for name in names)
    return ManifestActivation(
        project=project,
        environment=environment,
        platforms=tuple(platforms),
        manifest_name=manifest_name,
        env=tuple(env.items()),
        scripts=scripts,
    )


def _read_script(root: Path, name: str) -> ActivationScript:
    path = check_script_path(name, WorkspaceError)
    try:
        return ActivationScript(path, (root / path).read_bytes())
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return ActivationScript(path, None)
    except OSError as error:
        raise WorkspaceError(
            f"cannot read the activation script {name}: {error.strerror or error}"
        ) from error


def check_script_path(name: str, error: type[WorkspaceError] | type[PackError]) -> str:
    """A script path relative to the project, staying inside it."""
    posix = PurePosixPath(name.replace("\\", "/"))
    parts = [p for p in posix.parts if p not in ("", ".")]
    if posix.is_absolute() or not parts or ".." in parts or any("\0" in p for p in parts):
        raise error(
            f"the activation script {name!r} is not inside the workspace",
            "pixi-deploy ships the workspace only: move the script into it",
        )
    return "/".join(parts)


def check_env_name(name: str, error: type[WorkspaceError] | type[PackError]) -> str:
    if not _NAME.match(name):
        raise error(
            f"{name!r} in [activation] env is not a valid environment variable name",
            "use letters, digits and _ (not starting with a digit)",
        )
    return name


def export_line(name: str, value: str) -> str:
    """``export NAME=value`` as rattler writes it for bash: a value with ``$`` goes in double
    quotes, so that it expands when the environment is activated (``$HOME/bin``,
    ``$PIXI_PROJECT_ROOT/data``); any other value is quoted literally."""
    if "$" in value:
        return f'export {name}="{value.replace(chr(34), chr(92) + chr(34))}"'
    return f"export {name}={shlex.quote(value)}"


def activate_script_text(
    final: Path,
    environment: str,
    platform: str,
    package_env: dict[str, str],
    activate_d: list[str],
    activation: ManifestActivation | None,
    needs: Sequence[str] = (),
) -> str:
    """The text of ``activate.sh`` for an environment that lives at ``final``.

    With ``needs`` (the lock's virtual packages) it first checks that the machine it runs on
    can run the environment (`pixi_deploy.target.shell_check`): on a compute node whose glibc
    or CUDA driver is too old, ``. activate.sh`` changes nothing and returns `UNMET_STATUS`
    with one line saying why, before a job's command runs into a loader error."""
    q = shlex.quote
    lines = [
        "# Activate this environment: `. activate.sh` (bash, zsh, dash: any POSIX shell).",
        f"# Written by pixi-deploy for environment {_one_line(q(environment))} "
        f"({_one_line(platform)}).",
    ]
    check = shell_check(needs, environment)
    if check:
        lines.append(check.strip("\n"))
    lines += [
        f'export PATH={q(str(final / "bin"))}"${{PATH:+:${{PATH}}}}"',
        "export CONDA_SHLVL=1",
        f"export CONDA_PREFIX={q(str(final))}",
    ]
    lines += [f"export {name}={q(value)}" for name, value in package_env.items()]
    if activation is None:  # a pack written before packs carried the manifest's activation
        lines += [
            f"export CONDA_DEFAULT_ENV={q(environment)}",
            f"export PIXI_ENVIRONMENT_NAME={q(environment)}",
        ]
    else:
        carried = q(str(final / CARRIED_DIR))
        default_env = activation.conda_default_env
        lines += [
            "# the project: a job's copy of the code snapshot, else the copy carried here",
            f'export PIXI_PROJECT_ROOT="${{PIXI_PROJECT_ROOT:-{carried}}}"',
            f"export PIXI_PROJECT_NAME={q(activation.project)}",
            f'export PIXI_PROJECT_MANIFEST="$PIXI_PROJECT_ROOT"/{q(activation.manifest_name)}',
            f"export CONDA_DEFAULT_ENV={q(default_env)}",
            f"export PIXI_ENVIRONMENT_NAME={q(activation.environment)}",
            f"export PIXI_ENVIRONMENT_PLATFORMS={q(','.join(activation.platforms))}",
            f"export PIXI_PROMPT={q(f'({default_env}) ')}",
        ]
    lines += [f". {q(str(final / 'etc' / 'conda' / 'activate.d' / name))}" for name in activate_d]
    if activation is not None:
        lines.append("__pd_activation_failed=")
        for script in activation.scripts:
            path = f'"$PIXI_PROJECT_ROOT"/{q(script.path)}'
            lines.append(
                f"if [ -f {path} ]; then . {path}; else printf 'pixi-deploy: the activation "
                f"script %s does not exist\\n' {path} >&2; __pd_activation_failed=1; fi"
            )
        lines += [export_line(name, value) for name, value in activation.env]
        lines.append('[ -z "$__pd_activation_failed" ]')  # `. activate.sh` fails if one was missing
    return "\n".join(lines) + "\n"


def write_activate_script(
    staging: Path,
    final: Path,
    environment: str,
    platform: str,
    activation: ManifestActivation | None = None,
    needs: Sequence[str] = (),
) -> Path:
    """Write ``activate.sh`` (and the manifest's scripts, carried) into the environment being
    built in ``staging``, for its final path ``final``.

    Written here rather than taken from rattler's activation, because it must name the *final*
    path (which may not exist on this machine) and quote it for the shell whatever it contains.
    """
    activate_d = staging / "etc" / "conda" / "activate.d"
    scripts = sorted(p.name for p in activate_d.glob("*.sh")) if activate_d.is_dir() else []
    if activation is not None:
        activation.check()
        carried = staging / CARRIED_DIR
        for script in activation.scripts:
            target = carried / script.path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(script.content or b"")
            os.chmod(target, 0o644)
    env = package_env_vars(staging)
    text = activate_script_text(final, environment, platform, env, scripts, activation, needs)
    target = staging / ACTIVATE_NAME
    target.write_text(text)
    os.chmod(target, 0o644)
    return target


def package_env_vars(prefix: Path) -> dict[str, str]:
    """Variables packages and pixi set: etc/conda/env_vars.d/*.json, then conda-meta/state."""
    found: dict[str, str] = {}
    sources = sorted((prefix / "etc" / "conda" / "env_vars.d").glob("*.json"))
    state = prefix / "conda-meta" / "state"
    for source in sources:
        data = json.loads(source.read_text())
        found.update({str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {})
    if state.is_file():
        data = json.loads(state.read_text()).get("env_vars", {})
        found.update({str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {})
    return {k: v for k, v in found.items() if k.isidentifier()}


def _one_line(text: str) -> str:
    """Text safe inside a ``#`` comment: a newline would end the comment and run the rest."""
    return "".join(c if c.isprintable() else "?" for c in text)
