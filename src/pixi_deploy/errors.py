"""One small hierarchy of errors, each carrying what to do next.

The CLI prints ``str(error)`` as one line and exits with ``error.exit_code``; Python callers catch
the class they care about. Messages must never contain a password or key material.
"""

from __future__ import annotations

import errno


class PixiDeployError(Exception):
    """Base class: a problem the user can fix, with a one-line message that says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(f"{message} ({hint})" if hint else message)

    def __reduce__(self) -> tuple[type[PixiDeployError], tuple[str, str | None]]:
        return type(self), (self.message, self.hint)  # pickled from worker processes


class WorkspaceError(PixiDeployError):
    """The manifest or lock file is missing, unreadable, or lacks what was asked for."""

    exit_code = 2


class PackError(PixiDeployError):
    """A pack could not be written, or a pack file is corrupt, truncated or of another format."""

    exit_code = 3


class FetchError(PixiDeployError):
    """A package is neither in the download cache nor reachable, or its checksum is wrong."""

    exit_code = 4


class StoreError(PixiDeployError):
    """The target store (local folder or remote base path) cannot take the deployment."""

    exit_code = 5


class TransportError(PixiDeployError):
    """The SSH connection could not be made or was lost; never includes credentials."""

    exit_code = 6


class ConfigError(PixiDeployError):
    """Settings (environment variables, options, [tool.pixi-deploy]) contradict or are missing."""

    exit_code = 7


class SchedulerError(PixiDeployError):
    """Slurm refused a job, or a job ended in a failure state."""

    exit_code = 8


class ContainerError(PixiDeployError):
    """A container definition, CI workflow or OCI image could not be written or pushed."""

    exit_code = 9


def store_error_from_os(error: OSError, where: object) -> StoreError:
    """The one-line StoreError for a failed write: full disk, no permission, read-only, ..."""
    if error.errno == errno.ENOSPC:
        return StoreError(
            f"no space left on the device holding {where}", "free space or pick another folder"
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"cannot write to {where} ({error.strerror})", "pick a folder you can write to"
        )
    return StoreError(f"cannot write to {where}: {error.strerror or error}")
