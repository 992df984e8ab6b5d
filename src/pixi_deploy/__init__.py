"""pixi-deploy: a locked pixi environment, running unchanged on clusters and in containers."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pixi-deploy")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
