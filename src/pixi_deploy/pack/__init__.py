"""Packs: one file holding everything an environment needs to install offline."""

from pixi_deploy.pack.fetch import Artifact, DownloadCache, artifacts_of, default_cache_dir
from pixi_deploy.pack.format import PackedFile, PackMetadata
from pixi_deploy.pack.layout import lay_out_prefix, write_activate_script
from pixi_deploy.pack.unpack import UnpackResult, pack_digest, read_metadata, unpack
from pixi_deploy.pack.write import PackResult, write_pack

__all__ = [
    "Artifact",
    "DownloadCache",
    "PackMetadata",
    "PackResult",
    "PackedFile",
    "UnpackResult",
    "artifacts_of",
    "default_cache_dir",
    "lay_out_prefix",
    "pack_digest",
    "read_metadata",
    "unpack",
    "write_activate_script",
    "write_pack",
]
