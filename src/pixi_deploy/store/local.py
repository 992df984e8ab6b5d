"""The local store: content-addressed environments in a folder on this machine.

It is the reference implementation of the store protocol (deploy, list, prune, run) and what makes
the whole pipeline testable without a cluster, as submitit's local executor does for Slurm. A
deploy builds beside the final path and renames into place under an exclusive lock, so concurrent
deploys of one environment do the work once and an interrupted one never leaves a half
environment where a run would find it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from pixi_deploy.errors import StoreError, store_error_from_os
from pixi_deploy.pack.fetch import DownloadCache
from pixi_deploy.pack.layout import ACTIVATE_NAME, check_environment_path, lay_out_environment
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import discarded_on_exit
from pixi_deploy.store.image import build_image, check_format, mount_and_run_argv, sha256_of
from pixi_deploy.store.layout import StoreLayout
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata
from pixi_deploy.workspace import ResolvedEnvironment, current_platform


class LocalStore:
    def __init__(self, base: Path, cache: DownloadCache | None = None) -> None:
        self.base = Path(base).expanduser().absolute()
        check_environment_path(self.base)
        self.layout = StoreLayout(str(self.base))
        self.cache = cache or DownloadCache()

    # -- deploy -------------------------------------------------------------------------------
    def deploy(
        self,
        resolved: ResolvedEnvironment,
        *,
        name: str | None = None,
        reporter: Reporter | None = None,
        format: str | None = None,
    ) -> DeploymentMetadata:
        """``format`` "squashfs": one image, BASE/images/<hash>.sqfs (store/image.py)."""
        reporter = reporter or NullReporter()
        image = check_format(format) == "squashfs"
        if resolved.platform != current_platform():
            raise StoreError(
                f"a local target runs {current_platform()}, not {resolved.platform}",
                f"deploy with -p {current_platform()}, or use `pack -p {resolved.platform}`",
            )
        self._prepare_base()
        key = resolved.short_hash
        final = Path(self.layout.env(key))
        if image:
            published = self._deploy_image(resolved, key, final, reporter)
            if name:
                self._set_name(name, key)
                published.name = name
            return published
        existing = self._complete(final)
        if existing is None:
            with self._exclusive(key):
                existing = self._complete(final)  # another deploy may have finished meanwhile
                if existing is None:
                    self._build(resolved, key, final, reporter)
                    existing = self._complete(final)
                    assert existing is not None
                else:
                    existing.reused = True
        else:
            existing.reused = True
            reporter.step(f"environment {key} is already deployed at {final}: nothing to do")
        if name:
            self._set_name(name, key)
            existing.name = name
        return existing

    def _build(
        self, resolved: ResolvedEnvironment, key: str, final: Path, reporter: Reporter
    ) -> None:
        for stale in final.parent.glob(f".{key}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed deploy; we hold the lock
        try:
            with discarded_on_exit(
                lambda: Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{key}.staging-")),
                lambda staging: shutil.rmtree(staging, ignore_errors=True),  # gone once renamed
            ) as staging:
                lay_out_environment(
                    resolved, self.cache, staging=staging, final=final, reporter=reporter
                )
                metadata = DeploymentMetadata.for_environment(resolved, str(final), "local")
                metadata.write(staging / METADATA_NAME)
                os.rename(staging, final)
        except OSError as error:
            raise store_error_from_os(error, final) from error
        reporter.step(f"deployed environment {key} at {final}")

    def _deploy_image(
        self, resolved: ResolvedEnvironment, key: str, final: Path, reporter: Reporter
    ) -> DeploymentMetadata:
        meta = Path(self.layout.image_metadata(key))
        existing = self._sound_image(meta)
        if existing is None:
            with self._exclusive(key):
                existing = self._sound_image(meta)
                if existing is None:
                    self._drop_corrupt_image(key, meta, reporter)
                    return self._build_image(resolved, key, final, reporter)
        existing.reused = True
        reporter.step(f"environment image {key} is already deployed at {existing.image}")
        return existing

    def _build_image(
        self, resolved: ResolvedEnvironment, key: str, final: Path, reporter: Reporter
    ) -> DeploymentMetadata:
        """Lay out beside the image for the mountpoint's path, squash, publish by renaming."""
        images = Path(self.layout.image(key)).parent
        try:
            images.mkdir(exist_ok=True)
        except OSError as error:
            raise store_error_from_os(error, images) from error
        for stale in images.glob(f".{key}.staging-*"):  # a killed build's; we hold the lock
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        try:
            with discarded_on_exit(
                lambda: Path(tempfile.mkdtemp(dir=images, prefix=f".{key}.staging-")),
                lambda staging: shutil.rmtree(staging, ignore_errors=True),
            ) as staging:
                tree = staging / "tree"
                lay_out_environment(
                    resolved, self.cache, staging=tree, final=final, reporter=reporter
                )
                metadata = DeploymentMetadata.for_environment(resolved, str(final), "local")
                metadata.format = "squashfs"
                metadata.image = self.layout.image(key)
                metadata.write(tree / METADATA_NAME)
                reporter.step(f"building the image {metadata.image} (mksquashfs, zstd)")
                built = staging / "image.sqfs"
                metadata.image_sha256 = build_image(tree, built)
                metadata.image_bytes = built.stat().st_size
                final.mkdir(exist_ok=True)  # the mountpoint
                os.rename(built, metadata.image)
                metadata.write(Path(self.layout.image_metadata(key)))  # published: complete
        except OSError as error:
            raise store_error_from_os(error, images) from error
        reporter.step(f"deployed environment image {key} at {metadata.image}")
        return metadata

    def _sound_image(self, meta: Path) -> DeploymentMetadata | None:
        """The published image's metadata if the image is whole: its sha256 is the one
        recorded (a corrupt or truncated image is never reused; jobs would refuse it)."""
        existing = self._complete_image(meta)
        if existing is None or not existing.image:
            return None
        return existing if sha256_of(Path(existing.image)) == existing.image_sha256 else None

    def _drop_corrupt_image(self, key: str, meta: Path, reporter: Reporter) -> None:
        """Under the lock: a published image that is not whole is unpublished (metadata first)
        before it is built again."""
        existing = self._complete_image(meta)
        if existing is not None and existing.image:
            reporter.step(
                f"the image {existing.image} is corrupt or truncated (its sha256 is not the one "
                "recorded): building it again"
            )
            doomed = meta.with_name(f".{key}.staging-corrupt.json")
            os.rename(meta, doomed)  # no longer a deployment; the mountpoint stays for jobs
            Path(existing.image).unlink(missing_ok=True)
            doomed.unlink(missing_ok=True)

    def _complete_image(self, meta: Path) -> DeploymentMetadata | None:
        if not meta.is_file() or not Path(meta.with_suffix(".sqfs")).is_file():
            return None
        return DeploymentMetadata.read(meta)

    def _complete(self, final: Path) -> DeploymentMetadata | None:
        meta = final / METADATA_NAME
        if not meta.is_file():
            return None
        return DeploymentMetadata.read(meta)

    def _prepare_base(self) -> None:
        try:
            for sub in ("envs", "locks", "names"):  # images/: made by the first image build
                (self.base / sub).mkdir(parents=True, exist_ok=True)
            with open(self.base / "locks" / ".write-probe", "a"):
                pass  # fails now, with a clear message, if the base is not writable
        except OSError as error:
            raise store_error_from_os(error, self.base) from error

    @contextmanager
    def _exclusive(self, key: str) -> Iterator[None]:
        with open(self.layout.lock(key), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _set_name(self, name: str, key: str) -> None:
        link = Path(self.layout.name(name))
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        os.symlink(self.layout.name_target(name, key), tmp)
        os.replace(tmp, link)

    # -- list / prune ---------------------------------------------------------------------------
    def deployments(self) -> list[DeploymentMetadata]:
        envs = self.base / "envs"
        found = []
        for path in sorted(envs.iterdir()) if envs.is_dir() else []:
            if path.name.startswith("."):
                continue
            meta = self._complete(path)
            if meta is not None:
                found.append(meta)
        images = self.base / "images"
        for path in sorted(images.glob("*.json")) if images.is_dir() else []:
            meta = self._complete_image(path)
            if meta is not None:
                found.append(meta)
        found.sort(key=lambda m: m.created, reverse=True)
        return found

    def names(self) -> dict[str, str]:
        root = self.base / "names"
        result = {}
        for link in root.rglob("*") if root.is_dir() else []:
            if link.is_symlink():
                result[str(link.relative_to(root))] = Path(os.readlink(link)).name
        return result

    def prune(self, keep: int) -> list[str]:
        """Remove all but the ``keep`` newest environments, sparing named and in-use ones."""
        named = set(self.names().values())
        removed = []
        for meta in self.deployments()[keep:]:
            key = Path(meta.deployment_path).name
            if key in named:
                continue
            with open(self.layout.in_use(key), "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a run is using it
                if meta.format == "squashfs" and meta.image:
                    self._remove_image(key, meta.image)
                    removed.append(meta.image)
                    continue
                doomed = Path(meta.deployment_path).with_name(f".{key}.staging-pruned")
                os.rename(meta.deployment_path, doomed)  # disappears atomically for readers
                shutil.rmtree(doomed, ignore_errors=True)
                removed.append(meta.deployment_path)
        return removed

    def _remove_image(self, key: str, image: str) -> None:
        """Metadata first (the image is then no deployment), then the image, then the empty
        mountpoint; the caller holds the in-use lock exclusively."""
        meta = Path(self.layout.image_metadata(key))
        doomed = meta.with_name(f".{key}.staging-pruned.json")
        os.rename(meta, doomed)
        Path(image).unlink(missing_ok=True)
        doomed.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: a directory deployment is there too
            Path(self.layout.env(key)).rmdir()

    # -- run ------------------------------------------------------------------------------------
    def run(
        self,
        deployment: DeploymentMetadata,
        command: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> int:
        return run_in_environment(
            Path(deployment.deployment_path), command, self.layout, cwd=cwd, env=env
        )


def run_in_environment(
    prefix: Path,
    command: Sequence[str],
    layout: StoreLayout | None = None,
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> int:
    """Run ``command`` with the environment activated; returns its exit code. ``env`` is set
    before activation (``PIXI_PROJECT_ROOT`` for a run in the workspace); without it, an
    inherited PIXI_PROJECT_ROOT is dropped, so activate.sh uses the scripts it carries."""
    activate = prefix / ACTIVATE_NAME
    image = _image_of(prefix, layout)
    if not activate.is_file() and image is None:
        raise StoreError(
            f"no deployed environment at {prefix} (it does not exist or was pruned)",
            "run `pixi-deploy deploy` again",
        )
    if not command:
        raise StoreError(
            "no command given", "put it after `--`, e.g. `pixi-deploy run -- python -V`"
        )
    argv = ["/bin/sh", "-c", '. "$0" && exec "$@"', str(activate), *command]
    if not activate.is_file() and image is not None:  # mounted for this run only
        argv = mount_and_run_argv(image, str(prefix), "", argv)
    in_use = layout.in_use(prefix.name) if layout else None
    environment = {k: v for k, v in os.environ.items() if k != "PIXI_PROJECT_ROOT"}
    environment.update(env or {})
    with _shared_lock(in_use):
        try:
            return subprocess.run(argv, check=False, cwd=cwd, env=environment).returncode
        except OSError as error:
            raise StoreError(f"cannot start {command[0]}: {error.strerror}") from error


@contextmanager
def _shared_lock(path: str | None) -> Iterator[None]:
    if path is None or not Path(path).parent.is_dir():
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_SH)
        yield


def _image_of(prefix: Path, layout: StoreLayout | None) -> str | None:
    """The image deployed for ``prefix`` (its mountpoint), if any."""
    if layout is None:
        return None
    meta = Path(layout.image_metadata(prefix.name))
    image = meta.with_suffix(".sqfs")
    return str(image) if meta.is_file() and image.is_file() else None
