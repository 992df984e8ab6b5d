"""`pixi-deploy image`: an OCI image of a locked environment, built straight from the lock (or a
pack), with no Docker engine.

Layer strategy: the environment is laid out once for its final path in the image (default
``/app/.pixi/envs/ENV``) and target platform; every conda package (and wheel) gets its own layer,
holding exactly the files its ``conda-meta`` record (or ``RECORD``) lists. Above ``max_layers``
the largest packages keep their own layer and the rest share buckets chosen by a hash of the
package name, so a change still touches one bucket. A small top layer holds ``conda-meta``,
``activate.sh``, everything no package owns, and the entrypoint. Files with prefix placeholders
are patched for the final path, which never changes, so a package's layer depends only on the
package: the same archive gives the same layer digest in every build, and layers are cached
(``<cache>/oci``) by that key, so a rebuild tars only what changed and a push uploads only that.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pixi_deploy.activation import ManifestActivation
from pixi_deploy.containers.image_layers import (
    LayerInfo,
    LayerSource,
    load_base,
    package_files,
    package_layers,
)
from pixi_deploy.containers.oci import (
    CONFIG,
    MANIFEST,
    BlobStore,
    BuiltImage,
    Descriptor,
    FileEntry,
    canonical,
    entries_under,
    oci_platform,
    source_date_epoch,
    write_layer,
)
from pixi_deploy.containers.oci_output import (
    write_docker_archive,
    write_oci_archive,
    write_oci_dir,
)
from pixi_deploy.containers.reference import Reference, find_credentials, parse_reference
from pixi_deploy.containers.registry import PushResult, push_image
from pixi_deploy.containers.squashfs_output import check_output, write_squashfs
from pixi_deploy.errors import ContainerError
from pixi_deploy.pack.archives import Archive, ArchiveSlice
from pixi_deploy.pack.fetch import DownloadCache, artifacts_of
from pixi_deploy.pack.layout import lay_out_prefix
from pixi_deploy.pack.unpack import extract_verified, records_from_lock
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.workspace import ResolvedEnvironment

OUTPUTS = ("oci-dir", "oci-archive", "docker-archive", "squashfs")
SUFFIXES = {
    "oci-dir": ".oci",
    "oci-archive": ".oci.tar",
    "docker-archive": ".docker.tar",
    "squashfs": ".sqfs",  # the image's rootfs, for Apptainer (containers/squashfs_output.py)
}
COMPRESSIONS = ("gzip", "none")
ENTRYPOINT = "/app/entrypoint.sh"
#: The default base: a glibc distribution (Ubuntu noble, glibc 2.39, as the lesson's recipe),
#: so that the image runs the environment's programs; pulled with the user's registry auth.
#: A site whose machines cannot reach Docker Hub names its own copy in `BASE_VARIABLE`.
DEFAULT_BASE = "docker.io/library/ubuntu:24.04"
BASE_VARIABLE = "PIXI_DEPLOY_IMAGE_BASE"
SCRATCH_WARNING = (
    "--base scratch: the image has no libc and no dynamic loader, so the environment's "
    f"programs cannot run in it; drop --base for the default ({DEFAULT_BASE}) or give a base "
    "with glibc"
)


def default_base() -> str:
    """The base image when none is given: ``$PIXI_DEPLOY_IMAGE_BASE``, else `DEFAULT_BASE`."""
    return os.environ.get(BASE_VARIABLE, "").strip() or DEFAULT_BASE


DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class ImageOptions:
    tag: str
    """NAME:TAG; with ``push`` the NAME says where (``ghcr.io/org/app:1.0``)."""
    base: str | None = None
    """None: a glibc distribution image (`default_base`); ``scratch`` (no libc: warned),
    an OCI layout folder ``DIR[:TAG]`` / ``oci:DIR[:TAG]``, an oci-archive
    ``FILE[:TAG]`` / ``oci-archive:FILE[:TAG]``, or a registry reference (``docker://`` optional)."""
    output: str | None = None
    """oci-dir, oci-archive, docker-archive or squashfs (the root filesystem, which Apptainer
    runs); default oci-dir unless pushing."""
    dest: Path | None = None
    push: bool = False
    prefix: str | None = None
    """Where the environment lives in the image; default /app/.pixi/envs/ENV."""
    cmd: tuple[str, ...] | None = None
    insecure_registry: bool = False
    registry_user: str | None = None
    compression: str = "gzip"
    max_layers: int = 100
    cache: DownloadCache | None = None


@dataclass(frozen=True)
class ImageResult:
    reference: str
    environment: str
    platform: str
    architecture: str
    lock_hash: str
    prefix: str
    manifest_digest: str
    config_digest: str
    layers: tuple[LayerInfo, ...]
    base_layers: int
    output: Path | None
    output_kind: str | None
    push: PushResult | None = None
    notes: tuple[str, ...] = field(default=())
    image: BuiltImage | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "environment": self.environment,
            "platform": self.platform,
            "architecture": self.architecture,
            "lock_hash": self.lock_hash,
            "prefix": self.prefix,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "base_layers": self.base_layers,
            "layers": [
                {
                    "digest": x.digest,
                    "size": x.size,
                    "packages": list(x.packages),
                    "cached": x.cached,
                }
                for x in self.layers
            ],
            "output": str(self.output) if self.output else None,
            "output_kind": self.output_kind,
            "push": None
            if self.push is None
            else {
                "reference": self.push.reference,
                "digest": self.push.digest,
                "uploaded": self.push.uploaded,
                "skipped": self.push.skipped,
                "bytes_uploaded": self.push.bytes_uploaded,
                "bytes_skipped": self.push.bytes_skipped,
            },
            "notes": list(self.notes),
        }


def build_image(
    resolved: ResolvedEnvironment, options: ImageOptions, *, reporter: Reporter | None = None
) -> ImageResult:
    """Build (and write and/or push) the image of ``resolved``; see :class:`ImageOptions`."""
    reporter = reporter or NullReporter()
    _validate(options)
    cache = options.cache or DownloadCache()
    artifacts = artifacts_of(resolved)
    cached = cache.fetch_all(artifacts, reporter)
    source = LayerSource(
        environment=resolved.name,
        platform=resolved.platform,
        lock_hash=resolved.lock_hash,
        workspace=resolved.workspace.name,
        python_version=resolved.python_version,
        records=list(resolved.conda_records),
        archives={a.filename: p for a, p in cached.items() if a.kind == "conda"},
        sha256={a.filename: a.sha256 for a in artifacts},
        wheels=[p for a, p in cached.items() if a.kind == "pypi"],
        activation=resolved.activation,
        needs=tuple(resolved.virtual_packages),
        verify=True,  # the cache may have changed since the files were fetched
    )
    return _build(source, options, cache, reporter)


def build_image_from_pack(
    pack: Path,
    options: ImageOptions,
    *,
    platform: str | None = None,
    reporter: Reporter | None = None,
) -> ImageResult:
    """The same as :func:`build_image`, from a pack file (offline)."""
    reporter = reporter or NullReporter()
    _validate(options)
    if not Path(pack).is_file():
        raise ContainerError(f"pack {pack} does not exist", "check --pack")
    cache = options.cache or DownloadCache()
    with _work(cache) as work:
        metadata, lock_path, files = extract_verified(Path(pack), work / "pkgs", reporter)
        if platform and platform != metadata.platform:
            raise ContainerError(
                f"the pack is for {metadata.platform}, not {platform}", "drop -p or pick its pack"
            )
        source = LayerSource(
            environment=metadata.environment,
            platform=metadata.platform,
            lock_hash=metadata.lock_hash,
            workspace=metadata.workspace,
            python_version=metadata.python_version,
            records=records_from_lock(lock_path, metadata),
            archives={Path(p).name: _copied(f) for p, f in files.items() if p.startswith("conda/")},
            sha256={Path(f.path).name: f.sha256 for f in metadata.files},
            wheels=[_copied(files[f.path]) for f in metadata.files if f.kind == "pypi"],
            activation=ManifestActivation.from_pack_extra(metadata.extra),
            needs=tuple(metadata.virtual_packages),
        )
        return _build(source, options, cache, reporter)


def _validate(options: ImageOptions) -> Reference:
    reference = parse_reference(options.tag, require_tag=True)
    if options.output is not None and options.output not in OUTPUTS:
        raise ContainerError(
            f"unknown output '{options.output}'", f"use one of {', '.join(OUTPUTS)}"
        )
    if options.output == "squashfs":
        check_output(options.dest)
    if options.compression not in COMPRESSIONS:
        raise ContainerError(
            f"unknown compression '{options.compression}'", f"use one of {', '.join(COMPRESSIONS)}"
        )
    if options.prefix is not None:
        prefix = PurePosixPath(options.prefix)
        if not prefix.is_absolute() or ".." in prefix.parts or str(prefix) == "/":
            raise ContainerError(
                f"--prefix {options.prefix} is not an absolute folder", "e.g. /opt/env"
            )
        if PurePosixPath(ENTRYPOINT).is_relative_to(prefix) or prefix.is_relative_to(ENTRYPOINT):
            raise ContainerError(
                f"--prefix {options.prefix} would hold {ENTRYPOINT}", "pick another"
            )
    if options.max_layers < 2:
        raise ContainerError("max_layers must be at least 2")
    return reference


def _work(cache: DownloadCache) -> AbstractContextManager[Path]:
    return cache.scratch("oci/tmp", "build-")


def _checked(files: dict[str, Path], source: LayerSource) -> dict[str, ArchiveSlice]:
    return {
        name: ArchiveSlice.of_file(path, source.sha256.get(name)) for name, path in files.items()
    }


def _copied(archive: Path | ArchiveSlice) -> Path:
    assert isinstance(archive, Path)  # extract_verified copies every member unless told not to
    return archive


def _build(
    source: LayerSource, options: ImageOptions, cache: DownloadCache, reporter: Reporter
) -> ImageResult:
    reference = _validate(options)
    os_, arch, variant = oci_platform(source.platform)
    credentials = (
        find_credentials(reference.registry, options.registry_user) if options.push else None
    )
    prefix = PurePosixPath(options.prefix or f"/app/.pixi/envs/{source.environment}")
    store = BlobStore(cache.root / "oci" / "blobs")
    epoch = source_date_epoch()
    base = options.base or default_base()
    with _work(cache) as work:
        base_manifest, base_config, base_name = load_base(
            base, source.platform, store, work, options.insecure_registry
        )
        if base_config.get("architecture", arch) != arch:
            raise ContainerError(
                f"the base image {base} is {base_config.get('architecture')}, "
                f"the environment is {source.platform} ({arch})",
                "pick a base image for the target platform",
            )
        staging = work / "prefix"
        reporter.step(f"laying out {len(source.records)} packages for {prefix} ({source.platform})")
        urls = {r.file_name: r.url for r in source.records}
        archives: dict[str, Archive] = dict(source.archives)
        wheels: list[Archive] = list(source.wheels)
        if source.verify:  # each archive checked against the lock where it is used
            archives = {
                n: ArchiveSlice.of_file(p, source.sha256.get(n)) for n, p in source.archives.items()
            }
            wheels = [ArchiveSlice.of_file(w, source.sha256.get(w.name)) for w in source.wheels]
        try:
            lay_out_prefix(  # every file written through pack.confined
                source.records,
                archives,
                wheels,
                staging=staging,
                final=Path(str(prefix)),
                platform=source.platform,
                python_version=source.python_version,
                cache_dir=work / "rattler",  # this build's own: nothing shared with the cache
                environment=source.environment,
                activation=source.activation,
                needs=source.needs,
                direct=True,
            )
        finally:
            for record in source.records:
                record.url = urls[record.file_name]
        groups, unowned = package_files(staging, source, urls)
        budget = options.max_layers - len(base_manifest.get("layers", [])) - 1
        layers, infos = package_layers(
            store, staging, prefix, groups, budget, source, options.compression, epoch
        )
        top_entries = entries_under(staging, unowned, prefix)
        has_shell = [s for s in ("bash", "sh") if (staging / "bin" / s).exists()]
        top_entries.append(
            FileEntry(ENTRYPOINT.lstrip("/"), data=_entrypoint(prefix, source), mode=0o755)
        )
        top = write_layer(store, top_entries, compression=options.compression, epoch=epoch)
    layers.append(top)
    infos.append(LayerInfo(top.descriptor.digest, top.descriptor.size, ("(top)",), False))
    notes: list[str] = []
    entrypoint = [ENTRYPOINT]
    if base_name is None:
        notes.append(SCRATCH_WARNING)
        if has_shell:
            entrypoint = [f"{prefix}/bin/{has_shell[0]}", ENTRYPOINT]
        else:
            notes.append(
                "scratch image and the environment has no shell: the entrypoint needs "
                "/bin/sh; use --base with a shell, or run commands without it"
            )
    base_cfg = base_config.get("config") or {}
    env = {k: v for k, v in (e.split("=", 1) for e in base_cfg.get("Env") or [] if "=" in e)}
    env["PATH"] = f"{prefix}/bin:{env.get('PATH', DEFAULT_PATH)}"
    env.update(
        {
            "CONDA_PREFIX": str(prefix),
            "CONDA_DEFAULT_ENV": source.environment,
            "PIXI_ENVIRONMENT_NAME": source.environment,
        }
    )
    created = datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    labels = dict(base_cfg.get("Labels") or {})
    labels.update(
        {
            "org.opencontainers.image.title": source.workspace or source.environment,
            "org.opencontainers.image.description": f"pixi environment '{source.environment}' of {source.workspace}, installed from pixi.lock",
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.version": reference.tag or "",
            "org.pixi-deploy.environment": source.environment,
            "org.pixi-deploy.platform": source.platform,
            "org.pixi-deploy.lock-hash": source.lock_hash,
            "org.pixi-deploy.prefix": str(prefix),
        }
    )
    if base_name:
        labels["org.opencontainers.image.base.name"] = base_name
    cmd = (
        list(options.cmd)
        if options.cmd
        else ([has_shell[0]] if has_shell else list(base_cfg.get("Cmd") or ["sh"]))
    )
    platform_cfg: dict[str, Any] = {"architecture": arch, "os": os_}
    if variant:
        platform_cfg["variant"] = variant
    config = {
        "created": created,
        **platform_cfg,
        "config": {
            **{
                k: v for k, v in base_cfg.items() if k not in ("Env", "Entrypoint", "Cmd", "Labels")
            },
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "WorkingDir": "/app",
            "Labels": dict(sorted(labels.items())),
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": [
                *(base_config.get("rootfs") or {}).get("diff_ids", []),
                *(layer.diff_id for layer in layers),
            ],
        },
        "history": [
            *(base_config.get("history") or []),
            *(
                {"created": created, "created_by": f"pixi-deploy: {' '.join(info.packages)}"}
                for info in infos
            ),
        ],
    }
    config_desc = store.add_bytes(canonical(config), CONFIG)
    layer_descs = [Descriptor.from_json(x) for x in base_manifest.get("layers", [])]
    layer_descs += [layer.descriptor for layer in layers]
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": config_desc.to_json(),
        "layers": [d.to_json() for d in layer_descs],
        "annotations": {"org.opencontainers.image.created": created},
    }
    if base_name:
        manifest["annotations"]["org.opencontainers.image.base.name"] = base_name
    manifest_desc = store.add_bytes(canonical(manifest), MANIFEST)
    image = BuiltImage(store, manifest_desc, config_desc, tuple(layer_descs))
    output_kind = options.output or (None if options.push else "oci-dir")
    dest = None
    if output_kind is not None:
        dest = Path(options.dest or _default_dest(reference, source, output_kind)).absolute()
        reporter.step(f"writing {output_kind} {dest}")
        if output_kind == "oci-dir":
            write_oci_dir(image, dest, reference.tag or "latest")
        elif output_kind == "oci-archive":
            write_oci_archive(image, dest, reference.tag or "latest")
        elif output_kind == "squashfs":
            with _work(cache) as work:
                write_squashfs(image, dest, work)
        else:
            write_docker_archive(image, dest, options.tag)
    pushed = None
    if options.push:
        reporter.step(f"pushing {reference}")
        pushed = push_image(
            image, reference, credentials, insecure=options.insecure_registry, reporter=reporter
        )
    return ImageResult(
        reference=options.tag,
        environment=source.environment,
        platform=source.platform,
        architecture=arch,
        lock_hash=source.lock_hash,
        prefix=str(prefix),
        manifest_digest=manifest_desc.digest,
        config_digest=config_desc.digest,
        layers=tuple(infos),
        base_layers=len(layer_descs) - len(layers),
        output=dest,
        output_kind=output_kind,
        push=pushed,
        notes=tuple(notes),
        image=image,
    )


def _default_dest(reference: Reference, source: LayerSource, kind: str) -> Path:
    name = reference.repository.rsplit("/", 1)[-1]
    return Path(f"{name}-{reference.tag}-{source.platform}{SUFFIXES[kind]}")


def _entrypoint(prefix: PurePosixPath, source: LayerSource) -> bytes:
    return (
        "#!/bin/sh\n"
        f"# Written by pixi-deploy: activates the pixi environment '{source.environment}' "
        f"({source.platform}), then runs the command.\n"
        f". {prefix}/activate.sh\n"
        'exec "$@"\n'
    ).encode()
