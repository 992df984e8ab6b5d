"""Bring every archive of an environment into a reusable, content-addressed download cache.

Entries live at ``<cache>/pkgs/<sha256>/<filename>``: the lock's sha256 is the key, so a cached file
is only ever one that matched it when it arrived, and the same package locked from a mirror or a
local copy of a channel is fetched once. Verification happens as bytes arrive (rattler does not
check ``file://`` packages, so we never rely on it), and files move into place atomically, so an
interrupted download never leaves a wrong entry behind. ``http(s)`` URLs are fetched through
:mod:`pixi_deploy.channels`: pixi's mirrors and the credentials pixi and rattler use.

The cache is input too: whoever can write it can plant a package that a later deploy (maybe as
root) installs. So a cache that another user could write (its folder, a parent without the
sticky bit, or an entry) is refused, and every archive is checked against the lock's sha256 again
where it is used (`pack.archives.ArchiveSlice`), not only when it arrived. Reads are bounded by
the lock's ``size``: a ``file://`` entry that is a symlink to ``/dev/zero`` is refused.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from pixi_deploy.channels import ChannelSettings, redact
from pixi_deploy.errors import FetchError, StoreError
from pixi_deploy.progress import Advance, NullReporter, Reporter
from pixi_deploy.scratch import scratch_folder
from pixi_deploy.workspace import PypiPackage, ResolvedEnvironment

CHUNK = 1 << 20
PARALLEL_DOWNLOADS = 8
#: A download the lock gives no size for (wheels) still stops somewhere.
MAX_UNSIZED_DOWNLOAD = 16 << 30


@dataclass(frozen=True)
class Artifact:
    """One file the environment needs: a conda archive or a wheel, with its expected digest."""

    kind: str  # "conda" or "pypi"
    url: str
    filename: str
    sha256: str
    size: int | None
    name: str

    @property
    def pack_path(self) -> str:
        return f"{self.kind}/{self.filename}"


def default_cache_dir() -> Path:
    explicit = os.environ.get("PIXI_DEPLOY_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pixi-deploy"


def artifacts_of(resolved: ResolvedEnvironment) -> list[Artifact]:
    """Every archive of the environment, in a stable order (conda first, then wheels)."""
    items: list[Artifact] = []
    for record in resolved.conda_records:
        sha = record.sha256.hex() if record.sha256 else None
        if sha is None:
            raise FetchError(
                f"package {record.file_name} has no sha256 in pixi.lock",
                "re-lock with a current pixi (`pixi lock`) so every package carries a sha256",
            )
        items.append(
            Artifact(
                "conda", str(record.url), record.file_name, sha, record.size, record.name.normalized
            )
        )
    for package in resolved.pypi_packages:
        items.append(_pypi_artifact(package))
    return items


def _pypi_artifact(package: PypiPackage) -> Artifact:
    filename = urllib.parse.unquote(package.filename.split("#", 1)[0])
    if package.sha256 is None or (package.is_path and not filename.endswith(".whl")):
        raise FetchError(
            f"PyPI package '{package.name}' is a path dependency ({package.location}) "
            "that has not been built",
            "pack/deploy build it; from Python call "
            "pixi_deploy.pack.inject.prepare_environment(resolved, cache) first",
        )
    if not filename.endswith(".whl"):
        raise FetchError(
            f"PyPI package '{package.name}' is locked as a source distribution ({filename})",
            "pass --build-sdists to build a wheel from it, or lock a wheel for it",
        )
    return Artifact("pypi", package.location, filename, package.sha256, None, package.name)


class DownloadCache:
    def __init__(self, root: Path | None = None, channels: ChannelSettings | None = None) -> None:
        self.root = (root or default_cache_dir()).expanduser()
        self._channels = channels

    @property
    def channels(self) -> ChannelSettings:
        """Mirrors and credentials for http(s) URLs (pixi's global configuration by default)."""
        if self._channels is None:
            self._channels = ChannelSettings.load()
        return self._channels

    @channels.setter
    def channels(self, settings: ChannelSettings) -> None:
        self._channels = settings

    @contextmanager
    def scratch(self, subdir: str, prefix: str, **options: bool) -> Iterator[Path]:
        """A scratch folder (`pixi_deploy.scratch`) under ``subdir`` of the cache; a cache that
        is read-only or full says so in one line."""
        with ExitStack() as stack:
            try:
                folder = stack.enter_context(scratch_folder(self.root / subdir, prefix, **options))
            except OSError as error:
                raise cache_error(error, self.root) from None
            yield folder

    def path_for(self, artifact: Artifact) -> Path:
        return self.root / "pkgs" / artifact.sha256 / artifact.filename

    def fetch_all(
        self, artifacts: Iterable[Artifact], reporter: Reporter | None = None
    ) -> dict[Artifact, Path]:
        """Every artifact's cached path; downloads what is missing, in parallel. The paths are
        still to be checked against their sha256 where they are used."""
        reporter = reporter or NullReporter()
        wanted = list(artifacts)
        check_private_folder(self.root)
        missing = [a for a in wanted if not self._present(a)]
        if missing:
            total = sum(a.size or 0 for a in missing) or None
            reporter.step(f"fetching {len(missing)} of {len(wanted)} packages into {self.root}")
            with reporter.task("download", total) as advance:
                pool = ThreadPoolExecutor(PARALLEL_DOWNLOADS)
                try:
                    for future in [pool.submit(self._fetch, a, advance) for a in missing]:
                        future.result()
                finally:
                    # on an error or Ctrl-C the queued downloads are dropped, not run first
                    pool.shutdown(wait=True, cancel_futures=True)
        return {a: self.path_for(a) for a in wanted}

    def _present(self, artifact: Artifact) -> bool:
        path = self.path_for(artifact)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise cache_error(error, self.root) from None
        if (
            not stat.S_ISREG(info.st_mode)
            or info.st_uid not in (os.geteuid(), 0)
            or (info.st_mode & 0o022)
        ):
            raise StoreError(
                f"the download cache entry {path} is not a regular file of yours that only you "
                "can write",
                f"remove it (rm -rf {path.parent}) and run the command again",
            )
        return True

    def _fetch(self, artifact: Artifact, advance: Advance) -> Path:
        target = self.path_for(artifact)
        try:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
        except OSError as error:
            raise cache_error(error, self.root) from None
        tmp = Path(tmp_name)
        try:
            digest = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out:  # reading errors come as FetchError
                    for chunk in _open_chunks(artifact, self.channels):
                        digest.update(chunk)
                        out.write(chunk)
                        advance(len(chunk))
            except OSError as error:  # writing (or closing: the last flush) the cache entry
                raise cache_error(error, self.root) from None
            if digest.hexdigest() != artifact.sha256:
                raise FetchError(
                    f"{artifact.filename} from {redact(artifact.url)} does not match the sha256 "
                    f"in pixi.lock (got {digest.hexdigest()[:16]}…, want {artifact.sha256[:16]}…)",
                    "the channel serves a different file than was locked; re-lock or fix the mirror",
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def _open_chunks(artifact: Artifact, channels: ChannelSettings) -> Iterable[bytes]:
    """The artifact's bytes, never more than the lock's ``size`` (plus one, to notice)."""
    url = artifact.url
    parsed = urllib.parse.urlparse(url)
    limit = MAX_UNSIZED_DOWNLOAD if artifact.size is None else artifact.size
    if parsed.scheme in ("", "file"):
        path = Path(urllib.request.url2pathname(parsed.path) if parsed.scheme else url)
        yield from _bounded(_file_chunks(artifact, path), limit, artifact, str(path))
        return
    if parsed.scheme not in ("http", "https"):
        raise FetchError(f"{artifact.filename}: unsupported URL scheme '{parsed.scheme[:20]}'")
    with channels.open(url, artifact.filename) as response:
        try:
            yield from _bounded(_response_chunks(response), limit, artifact, redact(url))
        except (TimeoutError, OSError) as error:
            raise FetchError(
                f"{artifact.filename}: the download from {redact(url)} broke off ({error})",
                "run the command again",
            ) from None


def _file_chunks(artifact: Artifact, path: Path) -> Iterable[bytes]:
    try:  # O_NONBLOCK: opening a FIFO would otherwise wait for a writer, forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise FetchError(
            f"{artifact.filename}: not in the download cache and {path} is not readable "
            f"({error.strerror})",
            "check the channel path in pixi.lock, or fill the cache with `pixi-deploy pack` "
            "on a machine that can reach it",
        ) from error
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FetchError(
                f"{artifact.filename}: {path} is not a regular file (a device or a pipe?)",
                "point pixi.lock at the package archive itself",
            )
        try:
            while chunk := source.read(CHUNK):
                yield chunk
        except OSError as error:
            raise FetchError(
                f"{artifact.filename}: reading {path} failed ({error.strerror})"
            ) from error


def _response_chunks(response: object) -> Iterable[bytes]:
    read = response.read  # type: ignore[attr-defined]
    while chunk := read(CHUNK):
        yield chunk


def _bounded(
    chunks: Iterable[bytes], limit: int, artifact: Artifact, where: str
) -> Iterable[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise FetchError(
                f"{artifact.filename} from {where} does not match the sha256 in pixi.lock (it is "
                f"larger than the {limit} bytes locked; reading stopped there)",
                "the channel serves a different file than was locked; re-lock or fix the mirror",
            )
        yield chunk


def check_private_folder(root: Path) -> None:
    """Refuse a download cache another user could write: its folder must be ours (or root's)
    and not group- or world-writable, and so must every parent (unless sticky, as /tmp is).
    Made (0755) when missing."""
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as error:
        raise cache_error(error, root) from None
    me = os.geteuid()
    folder = root.absolute()
    for current in (folder, *folder.parents):
        try:
            info = os.stat(current)
        except OSError as error:
            raise cache_error(error, root) from None
        writable_by_others = info.st_mode & 0o022 and not (
            current != folder and info.st_mode & stat.S_ISVTX
        )
        if info.st_uid not in (me, 0) or writable_by_others:
            owner = "another user" if info.st_uid not in (me, 0) else "others too"
            raise StoreError(
                f"the download cache {root} is not safe: {current} can be written by {owner} "
                f"(owner uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}), who could plant "
                "packages in it",
                f"use a cache only you can write (chmod go-w {current}), or set "
                "PIXI_DEPLOY_CACHE_DIR / --cache-dir to one",
            )


def cache_error(error: OSError, root: Path) -> StoreError:
    """The download cache, not the store, is what is full or read-only: say so."""
    if error.errno == errno.ENOSPC:
        return StoreError(
            f"no space left on the device holding the download cache {root}",
            "free space, or set PIXI_DEPLOY_CACHE_DIR / --cache-dir to another folder",
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(
            f"cannot write to the download cache {root} ({error.strerror})",
            "set PIXI_DEPLOY_CACHE_DIR / --cache-dir to a folder you can write to",
        )
    return StoreError(f"the download cache {root} cannot be used: {error.strerror or error}")
