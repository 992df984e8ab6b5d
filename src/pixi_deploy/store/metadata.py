"""`deployment_metadata.json`: where a deployed environment lives, and what it is.

It is written in two places: inside the deployed environment (so the store can list and prune
without the workspace) and in the caller's folder (so CI and pre-deployed runs can do
``jq -er '.deployment_path' deployment_metadata.json``). It never carries credentials.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pixi_deploy import __version__
from pixi_deploy.errors import StoreError
from pixi_deploy.workspace import ResolvedEnvironment, git_state

METADATA_NAME = "deployment_metadata.json"


@dataclass
class DeploymentMetadata:
    deployment_path: str
    environment: str
    platform: str
    lock_hash: str
    created: str
    target: str
    activate_script: str
    workspace: str = ""
    git_commit: str | None = None
    git_dirty: bool | None = None
    name: str | None = None
    conda_packages: int = 0
    pypi_packages: int = 0
    tool_version: str = __version__
    reused: bool = False
    #: "directory", or "squashfs": then ``deployment_path`` is the image's mountpoint and
    #: ``image`` the image (BASE/images/<hash>.sqfs), checked against ``image_sha256`` by
    #: every job before it is mounted (store/image.py).
    format: str = "directory"
    image: str | None = None
    image_sha256: str | None = None
    image_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def at(cls, deployment_path: str) -> DeploymentMetadata:
        """Only where an environment already on the cluster lives (nothing else is known)."""
        path = deployment_path.rstrip("/")
        return cls(path, "", "", "", "", "", f"{path}/activate.sh")

    @classmethod
    def for_environment(
        cls, resolved: ResolvedEnvironment, deployment_path: str, target: str
    ) -> DeploymentMetadata:
        state = git_state(resolved.workspace.root)
        return cls(
            deployment_path=deployment_path,
            environment=resolved.name,
            platform=resolved.platform,
            lock_hash=resolved.lock_hash,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            target=target,
            activate_script=f"{deployment_path.rstrip('/')}/activate.sh",
            workspace=resolved.workspace.name,
            git_commit=state["git_commit"],
            git_dirty=state["git_dirty"],
            conda_packages=len(resolved.conda_records),
            pypi_packages=len(resolved.pypi_packages),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "deployment metadata") -> DeploymentMetadata:
        try:
            raw = json.loads(text)
            known = {k: v for k, v in raw.items() if k in cls.__dataclass_fields__}
            return cls(**known)
        except (ValueError, TypeError, AttributeError) as error:
            raise StoreError(
                f"{source} is not valid deployment metadata ({error})",
                "re-run `pixi-deploy deploy` to write it again",
            ) from error

    @classmethod
    def read(cls, path: Path) -> DeploymentMetadata:
        try:
            text = Path(path).read_text()
        except OSError as error:
            raise StoreError(
                f"cannot read {path} ({error.strerror})", "run `pixi-deploy deploy` first"
            ) from error
        return cls.from_json(text, str(path))

    def write(self, path: Path) -> Path:
        """Atomically: a reader sees the old file or the new one, never half of it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(self.to_json())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path
