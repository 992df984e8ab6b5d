"""Can this machine (or that login node, or that compute node) run the environment?

A lock records what the target must provide as virtual packages: ``__glibc >=2.28``, ``__cuda
>=12``, ``__linux``, ``__unix``. They are checked before anything moves, so a user learns "the
cluster has glibc 2.17, the environment needs 2.28" at deploy time instead of a loader error in a
job's log. Versions are compared with py-rattler's own version specs, as pixi and conda compare
them; ``CONDA_OVERRIDE_GLIBC`` / ``CONDA_OVERRIDE_CUDA`` override what is detected, as in conda
and pixi (an empty ``CONDA_OVERRIDE_CUDA`` means "no CUDA").

``__archspec`` (the CPU micro-architecture) is not checked: rattler's detection does not expose
the ancestry that a ``x86_64_v3`` requirement would need, and a wrong refusal is worse than none.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import rattler

from pixi_deploy.errors import StoreError

#: The virtual packages checked here (others are recorded, not checked).
CHECKED = ("__glibc", "__cuda", "__linux", "__unix", "__osx", "__win")


@dataclass(frozen=True)
class TargetFacts:
    """What a machine provides, as virtual packages do: None means "does not have it"."""

    where: str  # "this machine", "the login node host:22", ...
    system: str = "linux"  # "linux", "osx", "win"
    glibc: str | None = None
    cuda: str | None = None
    linux: str | None = None

    @classmethod
    def here(cls) -> TargetFacts:
        """This machine, from rattler's detection (which honours ``CONDA_OVERRIDE_*``)."""
        found = {
            str(g.name.normalized): str(g.version)
            for g in (
                v.into_generic()
                for v in rattler.VirtualPackage.detect(rattler.VirtualPackageOverrides.from_env())
            )
        }
        system = "osx" if "__osx" in found else "win" if "__win" in found else "linux"
        return cls(
            "this machine",
            system=system,
            glibc=found.get("__glibc"),
            cuda=found.get("__cuda"),
            linux=found.get("__linux"),
        )

    @classmethod
    def reported(
        cls,
        where: str,
        *,
        uname_s: str,
        glibc_line: str = "",
        kernel: str = "",
        environ: Mapping[str, str] | None = None,
    ) -> TargetFacts:
        """A remote machine from what its shell printed: ``uname -s``, ``getconf
        GNU_LIBC_VERSION`` ("glibc 2.36") and ``uname -r``; overrides from ``environ``."""
        env = os.environ if environ is None else environ
        words = glibc_line.split()
        glibc = words[1] if len(words) == 2 and words[0] == "glibc" else None
        if env.get("CONDA_OVERRIDE_GLIBC"):
            glibc = env["CONDA_OVERRIDE_GLIBC"]
        cuda = env.get("CONDA_OVERRIDE_CUDA") or None
        system = {"Linux": "linux", "Darwin": "osx"}.get(uname_s.strip(), uname_s.strip().lower())
        release = re.match(r"\d+(\.\d+)*", kernel.strip())
        return cls(
            where,
            system=system,
            glibc=glibc,
            cuda=cuda,
            linux=release.group(0) if release else None,
        )


def unmet(needs: Iterable[str], facts: TargetFacts) -> list[str]:
    """One phrase per need ``facts`` does not meet, e.g. "glibc >=2.28 (it has 2.17)"."""
    problems: list[str] = []
    for spec in _specs(sorted(set(needs))):
        name = str(spec.name.normalized) if spec.name else ""
        version = str(spec.version) if spec.version else ""
        wanted = f"{name.removeprefix('__')} {version}".strip()
        if name == "__unix" and facts.system == "win":
            problems.append("a Unix system (it runs Windows)")
        elif name in ("__osx", "__win", "__linux") and facts.system != name.removeprefix("__"):
            problems.append(f"{wanted} (it runs {facts.system})")
        elif name in ("__glibc", "__cuda", "__linux"):
            have = {"__glibc": facts.glibc, "__cuda": facts.cuda, "__linux": facts.linux}[name]
            if have is None:
                problems.append(f"{wanted} ({_missing(name)})")
            elif version and not rattler.VersionSpec(version).matches(rattler.Version(have)):
                problems.append(f"{wanted} (it has {have})")
    return problems


def _specs(needs: Iterable[str]) -> list[rattler.MatchSpec]:
    """The needs as match specs; one that does not parse is left out (a malformed lock is
    reported where the lock is read, not here)."""
    specs = []
    for need in needs:
        try:
            specs.append(rattler.MatchSpec(need))
        except Exception:  # noqa: S112 - rattler raises its own parse error types
            continue
    return specs


def _missing(name: str) -> str:
    return {
        "__glibc": "it has no glibc",
        "__cuda": "it has no NVIDIA driver",
        "__linux": "it is not Linux",
    }[name]


def check_target(needs: Sequence[str], facts: TargetFacts, what: str) -> None:
    """Raise one line naming every unmet need of ``what`` (an environment) on ``facts``."""
    problems = unmet(needs, facts)
    if not problems:
        return
    hint = "run it where these are met, or deploy an environment locked for that target"
    if any(p.startswith("cuda") for p in problems):
        hint = (
            "run it on a machine with a recent enough NVIDIA driver (set CONDA_OVERRIDE_CUDA "
            "if the driver is there but not detected)"
        )
    elif any(p.startswith("glibc") for p in problems):
        hint = (
            "lock the environment for an older glibc ([system-requirements] libc in the "
            "manifest), or run it on a newer system; CONDA_OVERRIDE_GLIBC overrides the detection"
        )
    raise StoreError(f"{facts.where} cannot run {what}: it needs {'; '.join(problems)}", hint)


def lower_bounds(needs: Iterable[str]) -> dict[str, str]:
    """The highest ``>=`` bound per checked package (``glibc``, ``cuda``), "0" for a bare need:
    what a compute node's shell check compares against (upper bounds such as ``<3.0.a0`` never
    bind in practice, and a POSIX shell has no version-spec parser)."""
    bounds: dict[str, rattler.Version] = {}
    for spec in _specs(needs):
        name = str(spec.name.normalized).removeprefix("__") if spec.name else ""
        if name not in ("glibc", "cuda"):
            continue
        floor = rattler.Version("0")
        for part in str(spec.version or "").replace("|", ",").split(","):
            match = re.fullmatch(r"\s*(>=|>|==|=)?\s*([0-9][0-9A-Za-z.]*)\*?\s*", part)
            if match and match.group(1) in (">=", ">", "==", "=", None) and part.strip():
                candidate = rattler.Version(match.group(2).rstrip("."))
                floor = max(floor, candidate)
        bounds[name] = max(bounds.get(name, floor), floor)
    return {name: str(version) for name, version in bounds.items()}


#: The exit status of a job (and the return status of ``. activate.sh``) on a machine that
#: cannot run the environment.
UNMET_STATUS = 96

_SHELL_CHECK = r"""
# pixi-deploy: can this machine run the environment? ({wants}; CONDA_OVERRIDE_GLIBC and
# CONDA_OVERRIDE_CUDA override what is detected, as in conda and pixi)
__pd_ge() {{
  __pd_h=$1; __pd_w=$2
  while [ -n "$__pd_w" ]; do
    __pd_a=${{__pd_h%%.*}}; __pd_b=${{__pd_w%%.*}}
    case $__pd_h in *.*) __pd_h=${{__pd_h#*.}} ;; *) __pd_h= ;; esac
    case $__pd_w in *.*) __pd_w=${{__pd_w#*.}} ;; *) __pd_w= ;; esac
    [ "${{__pd_a:-0}}" -gt "$__pd_b" ] 2>/dev/null && return 0
    [ "${{__pd_a:-0}}" -lt "$__pd_b" ] 2>/dev/null && return 1
  done
  return 0
}}
__pd_unmet=
{checks}
unset -f __pd_ge
if [ -n "$__pd_unmet" ]; then
  printf 'pixi-deploy: %s cannot run environment %s: it needs%s%s\n' \
    "${{SLURMD_NODENAME:-$(uname -n)}}" {environment} "$__pd_unmet" {hint} >&2
  unset __pd_unmet __pd_h __pd_w __pd_a __pd_b __pd_have
  return {status} 2>/dev/null || exit {status}
fi
unset __pd_unmet __pd_h __pd_w __pd_a __pd_b __pd_have
"""

_GLIBC = r"""
if [ -n "${{CONDA_OVERRIDE_GLIBC:-}}" ]; then __pd_have=$CONDA_OVERRIDE_GLIBC
else
  __pd_have=$(getconf GNU_LIBC_VERSION 2>/dev/null) && __pd_have=${{__pd_have#glibc }} \
    || __pd_have=$(ldd --version 2>&1 | sed -n '1s/.* \([0-9][0-9.]*\)$/\1/p')
fi
if [ -n "$__pd_have" ] && ! __pd_ge "$__pd_have" {want}; then
  __pd_unmet="${{__pd_unmet:+$__pd_unmet;}} glibc >={want} (it has $__pd_have)"
fi"""

_CUDA = r"""
if [ -n "${{CONDA_OVERRIDE_CUDA+set}}" ]; then __pd_have=$CONDA_OVERRIDE_CUDA
else
  __pd_have=$(nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9][0-9.]*\).*/\1/p')
fi
if [ -z "$__pd_have" ]; then
  __pd_unmet="${{__pd_unmet:+$__pd_unmet;}} cuda >={want} (it has no NVIDIA driver)"
elif ! __pd_ge "$__pd_have" {want}; then
  __pd_unmet="${{__pd_unmet:+$__pd_unmet;}} cuda >={want} (it has $__pd_have)"
fi"""


def shell_check(needs: Iterable[str], environment: str, *, hint: str = "") -> str:
    """POSIX shell lines that refuse (status `UNMET_STATUS`, one line on stderr) on a machine
    whose glibc or CUDA driver is older than ``needs``: what a job checks on its compute node,
    and an image or unpacked environment where it is activated. Empty when nothing is needed.
    ``hint`` ends that line (what to do)."""
    import shlex

    bounds = lower_bounds(needs)
    checks = []
    if "glibc" in bounds:
        checks.append(_GLIBC.format(want=_shell_version(bounds["glibc"])))
    if "cuda" in bounds:
        checks.append(_CUDA.format(want=_shell_version(bounds["cuda"])))
    if not checks:
        return ""
    wants = ", ".join(f"{name} >={version}" for name, version in sorted(bounds.items()))
    return _SHELL_CHECK.format(
        wants=wants,
        checks="".join(checks).strip("\n"),
        environment=shlex.quote(environment),
        hint=shlex.quote(f" ({hint})" if hint else ""),
        status=UNMET_STATUS,
    )


def _shell_version(version: str) -> str:
    """Dotted numbers only: what the shell compares (and safe to write into it unquoted)."""
    match = re.match(r"\d+(\.\d+)*", version)
    return match.group(0) if match else "0"
