"""pixi's manifest tables in pixi's order: an environment's features, and a table's targets.

Activation and tasks are both merged from these, the way pixi merges them: an environment is its
features in the order the manifest lists them, then the default feature (the manifest's top
level) unless ``no-default-feature`` is set; within a feature, ``[target.<selector>]`` tables
apply from the most specific selector to the least (``linux-64``, then ``linux``, then ``unix``),
and the feature's own table comes last. Kept apart so the two readers cannot disagree.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from pixi_deploy.errors import WorkspaceError

DEFAULT_FEATURE = "default"
_FAMILIES = {"linux": "linux", "osx": "osx", "win": "win", "emscripten": "emscripten"}


def environment_features(
    pixi: dict[str, Any], environment: str
) -> list[tuple[str, dict[str, Any]]]:
    """``(feature name, table)`` for ``environment``, in pixi's order (default feature last)."""
    environments = pixi.get("environments") or {}
    spec = environments.get(environment) if isinstance(environments, dict) else None
    names: list[str] = []
    no_default = False
    if isinstance(spec, list):
        names = [str(n) for n in spec]
    elif isinstance(spec, dict):
        names = [str(n) for n in spec.get("features") or []]
        no_default = bool(spec.get("no-default-feature", False))
    elif environment != DEFAULT_FEATURE:
        raise WorkspaceError(
            f"the manifest declares no environment '{environment}'",
            "pick one with -e/--environment that [environments] lists",
        )
    features = pixi.get("feature") or {}
    found: list[tuple[str, dict[str, Any]]] = []
    for name in names:
        table = features.get(name) if isinstance(features, dict) else None
        if not isinstance(table, dict):
            raise WorkspaceError(
                f"environment '{environment}' uses feature '{name}', which the manifest "
                "does not define",
                f"add a [feature.{name}] table or remove it from [environments]",
            )
        found.append((name, table))
    if not no_default:
        found.append((DEFAULT_FEATURE, pixi))
    return found


def selectors(platform: str) -> list[str]:
    """Target selectors that match ``platform``, most specific first (globs are matched later,
    between the exact name and the family)."""
    family = platform.split("-", 1)[0]
    chosen = [platform]
    if family in _FAMILIES:
        chosen.append(_FAMILIES[family])
    if family in ("linux", "osx"):
        chosen.append("unix")
    return chosen


def target_tables(table: dict[str, Any], platform: str) -> list[dict[str, Any]]:
    """The tables of ``table`` that apply on ``platform``: its matching ``[target.*]`` tables,
    most specific first, then ``table`` itself."""
    targets = table.get("target") or {}
    if not isinstance(targets, dict):
        targets = {}
    exact, *general = selectors(platform)
    ordered: list[str] = [exact]
    ordered += [
        s for s in targets if any(c in s for c in "*?[") and fnmatch.fnmatchcase(platform, s)
    ]
    ordered += general
    found = [targets[s] for s in ordered if isinstance(targets.get(s), dict)]
    return [*found, table]
