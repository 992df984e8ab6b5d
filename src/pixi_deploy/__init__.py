"""pixi-deploy: a locked pixi environment, running unchanged on clusters and in containers.

The operations the CLI has are functions here too (`pixi_deploy.api`, re-exported)::

    import pixi_deploy
    metadata = pixi_deploy.deploy(manifest_path="pixi.toml", environment="prod", target="ssh")

``pack`` and ``unpack`` are ``pixi_deploy.api.pack`` / ``pixi_deploy.api.unpack``: the name
``pixi_deploy.pack`` is the subpackage that writes and reads packs.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("pixi-deploy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: The application layer's operations, importable from the package itself.
API = (
    "inspect",
    "pack_info",
    "pack_digest",
    "deploy",
    "run",
    "submit",
    "list_deployments",
    "prune",
    "image",
    "EnvironmentRequest",
    "Preparation",
)


def __getattr__(name: str) -> Any:
    # lazily: `import pixi_deploy` stays cheap for code that needs only a submodule
    if name in API:
        from pixi_deploy import api

        return getattr(api, name)
    raise AttributeError(f"module 'pixi_deploy' has no attribute {name!r}")


__all__ = ["__version__", *API]
