"""A squashfs deploy to the cluster: one image, BASE/images/<hash>.sqfs (store/image.py).

The image is built where the environment's tree is: on the cluster when it is laid out there
already (a directory deployment of the same environment) and the cluster has mksquashfs;
otherwise here, from a tree laid out for the cluster's path, and streamed up in one pass,
hashed on both ends as it goes. Either way it is published under the environment's lock by one
rename, then its metadata, which makes it complete: an interrupted deploy leaves no image
that a job would find; a dropped connection reconnects and sends the image again. An image
found at the hash path is reused only if its sha256 is still the recorded one: a corrupt or
truncated one is built again and replaces it (jobs refuse it by checksum either way).
"""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from pixi_deploy.errors import StoreError
from pixi_deploy.pack.fetch import DownloadCache
from pixi_deploy.pack.layout import lay_out_environment
from pixi_deploy.progress import Reporter
from pixi_deploy.store import remote_scripts as sh
from pixi_deploy.store.image import SHA256_SH, ImageBuild, mksquashfs_argv
from pixi_deploy.store.image_stream import send_while_building
from pixi_deploy.store.metadata import METADATA_NAME, DeploymentMetadata
from pixi_deploy.transport import CommandResult, ConnectionLostError, RemoteCommandError
from pixi_deploy.workspace import ResolvedEnvironment

#: Upload the image while mksquashfs writes it (store/image_stream.py), or after.
STREAM_WHILE_BUILDING = True

if TYPE_CHECKING:
    from pixi_deploy.store.remote import RemoteStore

# Is the image published? Prints whether the cluster can build images itself, then, for a
# published image, its actual sha256 and its metadata (compared here: a corrupt or truncated
# image is not reused). Reading the image costs what every job's own check costs.
# $1 = base, $2 = key
PROBE = (
    SHA256_SH
    + r"""
if command -v mksquashfs >/dev/null 2>&1; then echo mksquashfs=yes; else echo mksquashfs=no; fi
img="$1/images/$2.sqfs"; meta="$1/images/$2.json"
if [ -f "$meta" ] && [ -f "$img" ]; then
  echo "sha256=$(__pd_sha256 < "$img" 2>/dev/null)"
  printf '\036\n'; cat "$meta"
fi
"""
)

# Publish an image that arrived under a staging name (its sha256 checked already: by the upload,
# or computed by IMAGE_BUILD; every job checks it again before mounting): make the mountpoint,
# write its metadata (stdin) beside it first (a full disk fails here, before anything is
# published), rename the image into place, then the metadata, which makes it complete. With
# $4 = replace, a published image (found corrupt) is replaced: its metadata goes first, so no
# job pairs the new image with the old checksum. Run while the deploy holds LOCK.
# $1 = base, $2 = key, $3 = staging image, $4 = keep|replace
PUBLISH = r"""
set -eu
base=$1; key=$2; staged=$3
umask 022
meta="$base/images/$key.json"
trap 'rm -f "$staged" "$meta.tmp.$$"' EXIT
mkdir -p "$base/images" "$base/envs"
if [ "$4" != replace ] && [ -f "$meta" ] && [ -f "$base/images/$key.sqfs" ]; then
  cat > /dev/null; echo present; exit 0
fi
[ -f "$staged" ] || { echo "the image $staged did not arrive" >&2; exit 4; }
cat > "$meta.tmp.$$"
mkdir -p "$base/envs/$key"
chmod 644 "$staged"
rm -f "$meta"
mv -f "$staged" "$base/images/$key.sqfs"
mv -f "$meta.tmp.$$" "$meta"
echo published
"""


class ImageDeploy:
    """One squashfs deploy of ``resolved``; ``directory`` is its directory deployment on the
    cluster, if there is one (then the image can be built there)."""

    def __init__(
        self,
        store: RemoteStore,
        resolved: ResolvedEnvironment,
        directory: DeploymentMetadata | None,
        cache: DownloadCache,
        reporter: Reporter,
    ) -> None:
        self.store = store
        self.resolved = resolved
        self.directory = directory
        self.cache = cache
        self.reporter = reporter
        self.key = resolved.short_hash
        #: laid out here (then the image built here): what a retry after a dropped
        #: connection starts from
        self._here: DeploymentMetadata | None = None
        self._image_done = False
        #: the published image was found corrupt or truncated: publishing replaces it
        self._replace = False

    def run(self) -> DeploymentMetadata:
        """Under the cluster's lock; a dropped connection re-takes it and resumes the upload
        (the image is built here once)."""
        from pixi_deploy.store.remote import MAX_ATTEMPTS, STAGING_PREFIX, TransferReport

        store = self.store
        found, _ = self._probe()
        if found is not None:
            return self._reused(found)
        before = store.transport.stats.bytes_uploaded
        with self.cache.scratch("staging", STAGING_PREFIX, remove_in_background=True) as tmp:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    found, metadata = self._locked(tmp)
                    if found is not None:
                        return self._reused(found)
                    break
                except ConnectionLostError as error:
                    if attempt == MAX_ATTEMPTS:
                        raise ConnectionLostError(
                            f"the SSH connection to the cluster dropped {MAX_ATTEMPTS} times "
                            f"while the environment image {self.key} was sent; nothing was "
                            "published",
                            "check the network and deploy again",
                        ) from error
                    self.reporter.step("the connection dropped; reconnecting to resume")
        moved = store.transport.stats.bytes_uploaded - before
        store.last_transfer = TransferReport(1, 1, moved, 0, 0)
        self.reporter.step(f"deployed environment image {self.key} at {metadata.image}")
        return metadata

    def _locked(self, tmp: Path) -> tuple[DeploymentMetadata | None, DeploymentMetadata]:
        """(found, published): one attempt while holding the cluster's lock."""
        from pixi_deploy.store.remote import first_line

        store = self.store
        lock = store.transport.iter_lines(["sh", "-c", sh.LOCK, "sh", store.base, self.key])
        try:
            self.reporter.step(f"taking the cluster's lock for {self.key}")
            first_line(lock, store.base)
            found, can_build = self._probe()  # another deploy may have published it meanwhile
            if found is not None:
                return found, found
            if self.directory is not None and can_build:
                return None, self._build_there(self.directory)
            if self._here is None:
                self._here = self._lay_out(tmp)
            if not self._image_done and STREAM_WHILE_BUILDING:
                return None, self._build_and_stream(tmp, self._here)
            if not self._image_done:
                self.reporter.step("building the image here (mksquashfs, zstd)")
                ImageBuild(tmp / "tree", tmp / "image.sqfs").wait()
                self._image_done = True
                shutil.rmtree(tmp / "tree", ignore_errors=True)
            return None, self._upload(tmp / "image.sqfs", self._here)
        finally:
            lock.close()

    def _probe(self) -> tuple[DeploymentMetadata | None, bool]:
        """(the published image, if it is whole; whether the cluster has mksquashfs)."""
        out = self._run(PROBE, [self.store.base, self.key]).stdout
        head, _, text = out.partition("\036\n")
        lines = head.splitlines()
        if not text.strip():
            return None, "mksquashfs=yes" in lines
        found = DeploymentMetadata.from_json(text, "the cluster's image metadata")
        if f"sha256={found.image_sha256}" not in lines or not found.image_sha256:
            if not self._replace:
                self.reporter.step(
                    f"the environment image {found.image} on the cluster is corrupt or "
                    "truncated (its sha256 is not the recorded one): building it again"
                )
            self._replace = True
            return None, "mksquashfs=yes" in lines
        return found, "mksquashfs=yes" in lines

    def _reused(self, found: DeploymentMetadata) -> DeploymentMetadata:
        from pixi_deploy.store.remote import TransferReport

        found.reused = True
        self.store.last_transfer = TransferReport()
        self.reporter.step(
            f"environment image {self.key} is already on the cluster: nothing to move"
        )
        return found

    def _metadata(self, base: DeploymentMetadata) -> DeploymentMetadata:
        return replace(
            base, format="squashfs", image=self.store.layout.image(self.key), reused=False
        )

    def _lay_out(self, tmp: Path) -> DeploymentMetadata:
        final = self.store.layout.env(self.key)
        tree = tmp / "tree"
        lay_out_environment(
            self.resolved, self.cache, staging=tree, final=Path(final), reporter=self.reporter
        )
        metadata = self._metadata(
            DeploymentMetadata.for_environment(self.resolved, final, self.store.target)
        )
        metadata.write(tree / METADATA_NAME)
        return metadata

    def _build_and_stream(self, tmp: Path, metadata: DeploymentMetadata) -> DeploymentMetadata:
        """mksquashfs here, its output streamed up as it grows (store/image_stream.py)."""
        staged = self._staged()
        self._run('rm -f -- "$1"', [staged])  # a killed deploy's, of another build
        self.reporter.step("building the image here (mksquashfs, zstd), uploading it meanwhile")
        build = ImageBuild(tmp / "tree", tmp / "image.sqfs")
        try:
            with self.reporter.task("upload", None) as advance:
                streamed, finish = send_while_building(self.store.transport, build, staged, advance)
        except ConnectionLostError:  # the image is still finished, and sent whole next time
            build.wait()
            self._image_done = True
            raise
        except BaseException:
            build.kill()
            raise
        build.wait()  # the build's own failure (a full disk here) comes first
        self._image_done = True
        # disk: the environment once; removed while the cluster checks and publishes the image
        # (the staging folder's own removal, at the end, takes whatever is left)
        threading.Thread(target=shutil.rmtree, args=(tmp / "tree", True), name="tree").start()
        metadata.image_bytes = (tmp / "image.sqfs").stat().st_size
        if streamed.exit_status != 0:
            self._check(streamed)
        digest, patched = finish()
        self._check(patched)
        if patched.stdout.strip() != digest:  # written out of order after all: send it whole
            self.reporter.step("the streamed image differs; sending it again whole")
            return self._upload(tmp / "image.sqfs", metadata)
        metadata.image_sha256 = digest
        return self._publish(staged, metadata)

    def _check(self, result: CommandResult) -> None:
        if result.exit_status != 0:
            detail = result.stderr.strip().splitlines()[-1:] or [
                f"exit status {result.exit_status}"
            ]
            raise self._error(detail[0])

    def _upload(self, built: Path, metadata: DeploymentMetadata) -> DeploymentMetadata:
        """One stream, hashed on both ends as it goes (no second pass over the image here or
        there); a dropped connection sends it again."""
        staged = self._staged()
        size = built.stat().st_size
        self.reporter.step(f"uploading the image ({size / 1e6:.1f} MB)")
        digest = hashlib.sha256()
        with self.reporter.task("upload", size) as advance:

            def produce(write: Callable[[bytes], None]) -> None:
                with open(built, "rb") as source:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        write(chunk)
                        advance(len(chunk))

            argv = ["sh", "-c", sh.IMAGE_RECEIVE, "sh", staged, str(size)]
            result = self.store.transport.pipe(argv, produce)
        self._check(result)
        metadata.image_bytes = size
        if result.stdout.strip() != digest.hexdigest():
            self._run('rm -f -- "$1"', [staged])
            raise StoreError(
                "the environment image arrived damaged on the cluster (its sha256 differs)",
                "run the deploy again",
            )
        metadata.image_sha256 = digest.hexdigest()
        return self._publish(staged, metadata)

    def _staged(self) -> str:
        return f"{self.store.base}/images/.{self.key}.incoming.sqfs"

    def _build_there(self, directory: DeploymentMetadata) -> DeploymentMetadata:
        self.reporter.step(
            f"building the image on the cluster from {directory.deployment_path} (mksquashfs)"
        )
        options = mksquashfs_argv("", "")[3:]
        out = self._run(sh.IMAGE_BUILD, [self.store.base, self.key, *options]).stdout.split()
        if len(out) != 3:
            raise self._error("mksquashfs on the cluster printed no image")
        metadata = self._metadata(directory)
        metadata.image_sha256, metadata.image_bytes = out[0], int(out[1])
        return self._publish(out[2], metadata)

    def _publish(self, staged: str, metadata: DeploymentMetadata) -> DeploymentMetadata:
        assert metadata.image_sha256
        args = [self.store.base, self.key, staged, "replace" if self._replace else "keep"]
        out = self._run(PUBLISH, args, input=metadata.to_json()).stdout
        if out.strip() == "present":
            text = self.store.transport.read_bytes(self.store.layout.image_metadata(self.key))
            return DeploymentMetadata.from_json(text.decode(), "the cluster's image metadata")
        return metadata

    def _run(self, script: str, args: list[str], input: str | None = None) -> CommandResult:
        try:
            return self.store.transport.run_script(script, args, input=input)
        except RemoteCommandError as error:
            text = (error.stderr or str(error)).strip().splitlines()
            raise self._error(text[-1] if text else str(error)) from error

    def _error(self, detail: str) -> Exception:
        from pixi_deploy.store.remote import store_error_text

        return store_error_text(detail, self.store.base)
