"""What one ``ComputeResource.run()`` call asks for, from its four sources.

dagster-slurm resolves per-run settings in this order, and so does pixi-deploy: an explicit
``run()`` argument, then the asset's ``SlurmRunConfig`` (launchpad), then the asset's metadata
(``skip_slurm_payload_upload``, ``slurm_payload_path``, ``force_slurm_env_push``,
``slurm_pre_deployed_env_path``, ``slurm_pack_cmd``), then the resource's defaults. Settings
whose feature pixi-deploy does not have fail here, with the reason, before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pixi_deploy.errors import ConfigError

from .config.runtime import SlurmRunConfig
from .strict import GUIDE

ENV_PUSH_REASON = (
    "pixi-deploy environments are content-addressed (the lock's hash names them) and checked "
    "when deployed, so an unchanged environment is never stale; a changed lock or manifest "
    "deploys a new one by itself"
)
PASSTHROUGH = frozenset({"extra_env", "extras", "extra_files", "poll_timeout", "use_session"})


@dataclass
class RunOptions:
    """The resolved per-run settings (see the module docstring)."""

    remote_payload: str | None = None  # set: do not upload, run this file on the cluster
    pre_deployed_env_path: str | None = None
    environment: str | None = None
    extra_files: list[str] = field(default_factory=list)
    use_session: bool | None = None


def asset_metadata(context: Any) -> list[Mapping[str, Any]]:
    """The metadata of the assets this step materializes ({} for plain ops and checks)."""
    has = getattr(context, "has_assets_def", False)
    if callable(has):
        has = has()
    if not has:
        return []
    assets_def = getattr(context, "assets_def", None)
    by_key = getattr(assets_def, "metadata_by_key", None) or {}
    keys = list(getattr(context, "selected_asset_keys", None) or by_key)
    return [by_key[k] for k in keys if isinstance(by_key.get(k), Mapping)]


def _meta(metadata: list[Mapping[str, Any]], key: str) -> Any:
    values = {str(m[key]) if not isinstance(m[key], bool) else m[key] for m in metadata if key in m}
    if len(values) > 1:
        raise ConfigError(f"the assets of this step disagree on metadata {key!r}: {values}")
    value = next(iter(values), None)
    return getattr(value, "value", value)  # MetadataValue or plain


def resolve(
    context: Any,
    payload_path: str,
    *,
    explicit: Mapping[str, Any],
    config: SlurmRunConfig | None,
    defaults: Mapping[str, Any],
    kwargs: Mapping[str, Any],
) -> RunOptions:
    """Merge the sources (explicit > config > metadata > defaults); refuse what is unbuilt."""
    unknown = sorted(set(kwargs) - PASSTHROUGH)
    if unknown:
        raise ConfigError(
            f"ComputeResource.run() got unknown argument(s) {', '.join(unknown)}", GUIDE
        )
    for name in ("metrics_collector", "slurm_metrics"):
        if explicit.get(name) is not None:
            raise ConfigError(
                f"ComputeResource.run({name}=...) is not supported by pixi-deploy: it records "
                "the Slurm job id, step and final state in the asset's metadata instead",
                "drop the argument (sacct <job id> shows the job's usage)",
            )
    metadata = asset_metadata(context)

    def pick(name: str, meta_key: str | None = None) -> Any:
        if explicit.get(name) is not None:
            return explicit[name]
        if config is not None and name in config.model_fields_set:
            return getattr(config, name)
        if meta_key is not None and _meta(metadata, meta_key) is not None:
            return _meta(metadata, meta_key)
        return None  # the resource's default, then the built-in one, apply

    if pick("force_env_push", "force_slurm_env_push"):
        raise ConfigError(
            f"force_env_push is not supported by pixi-deploy: {ENV_PUSH_REASON}", GUIDE
        )
    if _meta(metadata, "slurm_pack_cmd") is not None:
        raise ConfigError(
            "asset metadata slurm_pack_cmd is not supported by pixi-deploy: it deploys the pixi "
            "environment itself, without a pack command",
            "choose the environment with environment_name=... (a pixi environment) instead",
        )
    env_path = _meta(metadata, "slurm_pre_deployed_env_path") or defaults.get(
        "pre_deployed_env_path"
    )
    skip = pick("skip_payload_upload", "skip_slurm_payload_upload")
    if skip is None:
        skip = bool(defaults.get("default_skip_payload_upload"))
    remote = pick("remote_payload_path", "slurm_payload_path")
    if skip and not remote:
        if not env_path:
            raise ConfigError(
                "skip_payload_upload needs the payload's path on the cluster",
                "pass remote_payload_path=..., or set pre_deployed_env_path (the payload is "
                "then <pre_deployed_env_path>/scripts/<name>)",
            )
        remote = f"{str(env_path).rstrip('/')}/scripts/{Path(payload_path).name}"
    extra_files: Sequence[str] = [
        *defaults.get("default_extra_files", ()),
        *(kwargs.get("extra_files") or ()),
    ]
    return RunOptions(
        remote_payload=str(remote) if skip else None,
        pre_deployed_env_path=str(env_path) if env_path else None,
        environment=explicit.get("environment_name") or defaults.get("environment"),
        extra_files=list(dict.fromkeys(extra_files)),
        use_session=kwargs.get("use_session"),
    )
