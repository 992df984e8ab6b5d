"""Image references (``[registry/]name[:tag][@digest]``, parsed the way docker does) and the
credentials for a registry: ``--registry-user`` + ``$PIXI_DEPLOY_REGISTRY_PASSWORD``, or docker's
``config.json``. Passwords never appear in a repr or a message.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pixi_deploy.errors import ContainerError

PASSWORD_ENV = "PIXI_DEPLOY_REGISTRY_PASSWORD"  # noqa: S105 (a variable name)
DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$")
_HOST_RE = re.compile(r"^(?:[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\])(?::\d{1,5})?$")


@dataclass(frozen=True)
class Reference:
    """``[registry/]repository[:tag][@digest]``; ``registry`` is "docker.io" when none is named."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def target(self) -> str:
        """What a manifest is fetched or stored under: the digest, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str, *, require_tag: bool = False) -> Reference:
    """Parse an image reference the way docker does; a bad one is a one-line ContainerError."""
    hint = "use NAME:TAG, e.g. ghcr.io/org/app:1.0 (lowercase name; tag of letters, digits, _.-)"
    rest, _, digest = text.strip().partition("@")
    if digest and not _DIGEST_RE.match(digest):
        raise ContainerError(f"invalid image digest in '{text}'", hint)
    name, tag = rest, None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.match(tag):
            raise ContainerError(f"invalid image tag '{tag}' in '{text}'", hint)
    first, sep, remainder = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST_RE.match(first):
            raise ContainerError(f"invalid registry '{first}' in '{text}'", hint)
        registry, repository = first, remainder
    else:
        registry, repository = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if not _REPO_RE.match(repository) or len(repository) > 255:
        raise ContainerError(f"invalid image name '{name}' in '{text}'", hint)
    if require_tag and tag is None:
        raise ContainerError(f"'{text}' has no tag", hint)
    return Reference(registry, repository, tag, digest or None)


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def find_credentials(registry: str, username: str | None = None) -> Credentials | None:
    """``username`` + $PIXI_DEPLOY_REGISTRY_PASSWORD, else docker's config.json auths entry."""
    password = os.environ.get(PASSWORD_ENV)
    if username and password:
        return Credentials(username, password)
    stored = _docker_config_auth(registry)
    if stored and (username is None or stored.username == username):
        return stored
    if username:
        raise ContainerError(
            f"--registry-user {username} is given but ${PASSWORD_ENV} is not set",
            f"export {PASSWORD_ENV}, or log in with `docker login {registry}`",
        )
    return None


def _docker_config_auth(registry: str) -> Credentials | None:
    folder = os.environ.get("DOCKER_CONFIG") or str(Path.home() / ".docker")
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    auths = config.get("auths") or {}
    names = {registry, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/"}
    if registry == DOCKER_HUB:
        names |= {"https://index.docker.io/v1/", "index.docker.io", DOCKER_HUB_API}
    for key, entry in auths.items():
        if key.rstrip("/") in {n.rstrip("/") for n in names} and isinstance(entry, dict):
            if entry.get("auth"):
                try:
                    user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                except (ValueError, UnicodeDecodeError):
                    return None
                return Credentials(user, password)
            if entry.get("username") and entry.get("password"):
                return Credentials(entry["username"], entry["password"])
    return None
