"""Where things live under a store's base path; the same layout for a local folder and a cluster.

    BASE/envs/<hash>/            a complete environment (activate.sh, deployment_metadata.json)
    BASE/envs/.<hash>.staging-*  an environment being built; never used, removed when stale
    BASE/images/<hash>.sqfs      a single-file environment (--format squashfs); its mountpoint
                                 is the empty folder BASE/envs/<hash> (store/image.py)
    BASE/images/<hash>.json      its deployment metadata, with the image's sha256
    BASE/locks/<hash>.lock       held (exclusive) by the one deploy that builds <hash>
    BASE/locks/<hash>.in-use     held (shared) by every run using <hash>; prune skips those
    BASE/names/<name>            symlink to ../envs/<hash>: named deployments (branches, releases)

Paths are plain POSIX strings so the remote store can use them verbatim (quoted by the transport).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pixi_deploy.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


def check_name(name: str) -> str:
    """Deployment names become paths: allow `project/v2024.02`, refuse anything that escapes."""
    if not _NAME.fullmatch(name) or any(part in (".", "..") for part in name.split("/")):
        raise ConfigError(
            f"invalid deployment name '{name}'",
            "use letters, digits, '.', '_', '-' and '/' between parts, e.g. my-project/v2024.02",
        )
    return name


@dataclass(frozen=True)
class StoreLayout:
    base: str

    def env(self, key: str) -> str:
        return f"{self.base}/envs/{key}"

    def image(self, key: str) -> str:
        return f"{self.base}/images/{key}.sqfs"

    def image_metadata(self, key: str) -> str:
        return f"{self.base}/images/{key}.json"

    def staging_prefix(self, key: str) -> str:
        return f"{self.base}/envs/.{key}.staging-"

    def lock(self, key: str) -> str:
        return f"{self.base}/locks/{key}.lock"

    def in_use(self, key: str) -> str:
        return f"{self.base}/locks/{key}.in-use"

    def name(self, name: str) -> str:
        return f"{self.base}/names/{check_name(name)}"

    def name_target(self, name: str, key: str) -> str:
        """The symlink's content: relative, so the base path can move as a whole."""
        depth = check_name(name).count("/") + 1
        return "../" * depth + f"envs/{key}"
