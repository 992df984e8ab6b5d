"""Resources that refuse settings they do not know, instead of dropping them.

Dagster's Pydantic models ignore unknown keyword arguments: ``SSHConnectionResource(...,
jump_hots=...)`` or a dagster-slurm field pixi-deploy lacks would silently vanish and the
connection would go straight to the host. Every resource and config class of this package
derives from :class:`StrictResource` / :class:`StrictConfig`, which raise at construction,
naming the field and what to do. Fields that exist for dagster-slurm compatibility but whose
feature is not built use :func:`refuse` from a validator, so the error says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import dagster as dg
from pydantic import model_validator

GUIDE = "see 'Coming from dagster-slurm' in pixi-deploy's README"


class UnsupportedSetting(ValueError):
    """A dagster-slurm setting or argument whose feature pixi-deploy does not have."""


def refuse(owner: str, name: str, reason: str) -> UnsupportedSetting:
    """The error for a setting that is accepted by name but whose feature is not built."""
    return UnsupportedSetting(f"{owner}.{name} is not supported by pixi-deploy: {reason}")


def check_known(cls: type, data: Any, explained: Mapping[str, str]) -> None:
    """Raise for keys of ``data`` that are no field of ``cls`` (``explained`` may give the
    reason for names pixi-deploy knows but refuses, matched by prefix)."""
    if not isinstance(data, Mapping):
        return
    fields = getattr(cls, "model_fields", {})
    aliases = {f.alias for f in fields.values() if getattr(f, "alias", None)}
    unknown = sorted(k for k in data if k not in fields and k not in aliases)
    if not unknown:
        return
    for name in unknown:
        for prefix, reason in explained.items():
            if name.startswith(prefix):
                raise refuse(cls.__name__, name, reason)
    known = ", ".join(sorted(fields))
    raise UnsupportedSetting(
        f"{cls.__name__} has no setting {', '.join(unknown)} (it would be ignored); "
        f"known settings: {known}; {GUIDE}"
    )


class StrictResource(dg.ConfigurableResource):
    """A ConfigurableResource that refuses unknown fields (see the module docstring)."""

    refused_prefixes: ClassVar[Mapping[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        check_known(cls, data, cls.refused_prefixes)
        return data


class StrictConfig(dg.Config):
    """A Dagster Config (run configuration) that refuses unknown fields."""

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_fields(cls, data: Any) -> Any:
        check_known(cls, data, {})
        return data
