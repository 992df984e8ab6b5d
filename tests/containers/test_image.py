"""`pixi-deploy image`: OCI images built from the lock or a pack, checked with real tools.

skopeo and umoci read what we write, a real docker-registry takes what we push, and chroot runs
the environment through its entrypoint on a busybox base.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from containers.registry_fixture import CutProxy, Registry, ensure_tools, free_port
from helpers.activation import make_activation_workspace
from helpers.workspaces import CliResult
from pixi_deploy.containers.image import (
    BASE_VARIABLE,
    ImageOptions,
    ImageResult,
    build_image,
    build_image_from_pack,
    default_base,
)
from pixi_deploy.errors import ContainerError
from pixi_deploy.pack import DownloadCache, write_pack
from pixi_deploy.testing.channel import (
    DEMO_ENVIRONMENTS,
    PackageSpec,
    build_channel,
    demo_specs,
    lock_workspace,
    with_bumped,
)
from pixi_deploy.workspace import load_workspace

pytestmark = pytest.mark.timeout(300)
PREFIX = "/app/.pixi/envs/default"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    ensure_tools()


def skopeo(*args: str) -> str:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def one_line_error(result: CliResult, code: int, *words: str) -> None:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()  # progress steps (•) may come first
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert "Traceback" not in result.stderr


def test_linux64_image_runs_through_its_entrypoint(
    demo_ws: Path,
    cache: DownloadCache,
    busybox_base: Path,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    dest = tmp_path / "img.oci"
    result = cli(
        "image",
        "--manifest-path",
        demo_ws,
        "-e",
        "default",
        "-p",
        "linux-64",
        "--tag",
        "demo:1.0",
        "--base",
        f"{busybox_base}:latest",
        "--dest",
        dest,
        "--cache-dir",
        cache.root,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["architecture"] == "amd64" and data["base_layers"] == 1
    packages = [p for layer in data["layers"] for p in layer["packages"]]
    assert sorted(packages) == sorted(
        [
            "greet-1.0.0-h0_0",
            "greet-config-0.1.0-h0_0",
            "greet-data-2024.1-h0_0",
            "libgreet-1.2.0-h0_0",
            "(top)",
        ]
    )
    raw = json.loads(skopeo("inspect", "--raw", f"oci:{dest}:1.0"))
    assert len(raw["layers"]) == 6
    config = json.loads(skopeo("inspect", "--config", f"oci:{dest}:1.0"))
    assert (config["architecture"], config["os"]) == ("amd64", "linux")
    assert config["config"]["Entrypoint"] == ["/app/entrypoint.sh"]
    labels = config["config"]["Labels"]
    assert (
        labels["org.pixi-deploy.lock-hash"]
        == load_workspace(demo_ws).resolve("default", "linux-64").lock_hash
    )
    assert labels["org.pixi-deploy.environment"] == "default"
    assert f"CONDA_PREFIX={PREFIX}" in config["config"]["Env"]

    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{dest}:1.0", str(bundle)], check=True, capture_output=True
    )
    rootfs = bundle / "rootfs"
    assert (rootfs / PREFIX.lstrip("/") / "conda-meta").is_dir()
    run = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(rootfs), "/app/entrypoint.sh", "greet"],
        capture_output=True,
        text=True,
        env={"PATH": "/bin"},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert f"hello from greet 1.0.0 at {PREFIX}" in run.stdout
    assert "libgreet says hello" in run.stdout
    assert f"config: {PREFIX}/etc/greet.conf" in run.stdout  # activate.d ran


def test_aarch64_image_has_arm64_config(
    demo_ws: Path, cache: DownloadCache, tmp_path: Path
) -> None:
    resolved = load_workspace(demo_ws).resolve("extra", "linux-aarch64")
    result = build_image(
        resolved,
        ImageOptions(base="scratch", tag="demo:arm", dest=tmp_path / "arm.oci", cache=cache),
    )
    config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'arm.oci'}:arm"))
    assert (config["architecture"], config.get("variant")) == ("arm64", "v8")
    assert config["config"]["Env"][1] == "CONDA_PREFIX=/app/.pixi/envs/extra"
    assert result.architecture == "arm64"
    assert any("greet-extra" in p for layer in result.layers for p in layer.packages)


def test_layers_are_reproducible_tars(demo_ws: Path, tmp_path: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    first = build_image(
        resolved,
        ImageOptions(
            base="scratch", tag="demo:1", dest=tmp_path / "a", cache=DownloadCache(tmp_path / "c1")
        ),
    )
    second = build_image(
        resolved,
        ImageOptions(
            base="scratch", tag="demo:1", dest=tmp_path / "b", cache=DownloadCache(tmp_path / "c2")
        ),
    )
    assert first.manifest_digest == second.manifest_digest  # separate caches, separate staging
    assert not any(layer.cached for layer in second.layers)
    third = build_image(
        resolved,
        ImageOptions(
            base="scratch", tag="demo:1", dest=tmp_path / "a", cache=DownloadCache(tmp_path / "c1")
        ),
    )
    assert [layer.cached for layer in third.layers] == [True] * 4 + [False]
    blob = tmp_path / "a" / "blobs" / "sha256" / first.layers[0].digest.split(":")[1]
    with tarfile.open(blob) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and not m.uname for m in members)
    assert "app/.pixi/envs/default/bin/greet" in names


def test_source_date_epoch(
    demo_ws: Path, cache: DownloadCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1704067200")
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    result = build_image(
        resolved, ImageOptions(base="scratch", tag="demo:sde", dest=tmp_path / "i", cache=cache)
    )
    config = json.loads(skopeo("inspect", "--config", f"oci:{tmp_path / 'i'}:sde"))
    assert config["created"] == "2024-01-01T00:00:00Z"
    blob = tmp_path / "i" / "blobs" / "sha256" / result.layers[0].digest.split(":")[1]
    with tarfile.open(blob) as tar:
        assert {m.mtime for m in tar.getmembers()} == {1704067200}


def test_pack_and_lock_give_the_same_image(
    demo_ws: Path, cache: DownloadCache, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    from_lock = build_image(
        resolved,
        ImageOptions(
            base="scratch", tag="demo:1", output="oci-archive", dest=tmp_path / "a.tar", cache=cache
        ),
    )
    pack = write_pack(resolved, tmp_path / "demo.tar", cache=cache).path
    result = cli(
        "image",
        "--base",
        "scratch",
        "--pack",
        pack,
        "--tag",
        "demo:1",
        "--output",
        "oci-archive",
        "--dest",
        tmp_path / "b.tar",
        "--cache-dir",
        tmp_path / "c",
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["manifest_digest"] == from_lock.manifest_digest
    raw = json.loads(skopeo("inspect", "--raw", f"oci-archive:{tmp_path / 'b.tar'}:1"))
    assert raw["config"]["digest"] == from_lock.config_digest
    with pytest.raises(ContainerError, match="not linux-aarch64"):
        build_image_from_pack(
            pack, ImageOptions(base="scratch", tag="demo:1", cache=cache), platform="linux-aarch64"
        )


def test_docker_archive_is_docker_save_format(
    demo_ws: Path, cache: DownloadCache, busybox_base: Path, tmp_path: Path
) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    dest = tmp_path / "demo.docker.tar"
    result = build_image(
        resolved,
        ImageOptions(
            tag="example.org/team/demo:2.0",
            base=f"oci:{busybox_base}:latest",
            output="docker-archive",
            dest=dest,
            cache=cache,
        ),
    )
    with tarfile.open(dest) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
    assert manifest[0]["RepoTags"] == ["example.org/team/demo:2.0"]
    assert len(manifest[0]["Layers"]) == len(config["rootfs"]["diff_ids"]) == 6
    assert set(manifest[0]["Layers"]) <= names
    assert config["architecture"] == "amd64"
    inspected = json.loads(skopeo("inspect", "--config", f"docker-archive:{dest}"))
    assert inspected["rootfs"]["diff_ids"] == config["rootfs"]["diff_ids"]
    assert result.output == dest


def test_push_then_pull_back_with_skopeo(
    demo_ws: Path,
    cache: DownloadCache,
    registry: Registry,
    tmp_path: Path,
    cli: Callable[..., CliResult],
) -> None:
    tag = f"{registry.host}/demo/env:1.0"
    result = cli(
        "image",
        "--base",
        "scratch",
        "--manifest-path",
        demo_ws,
        "-p",
        "linux-64",
        "--tag",
        tag,
        "--push",
        "--cache-dir",
        cache.root,
        "--json",
    )
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["output"] is None and data["push"]["digest"] == data["manifest_digest"]
    copy = tmp_path / "copy"
    skopeo("copy", "--src-tls-verify=false", f"docker://{tag}", f"oci:{copy}:1.0")
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{tag}"))
    assert inspected["Digest"] == data["manifest_digest"]
    assert inspected["Architecture"] == "amd64"
    pulled = json.loads((copy / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == data["manifest_digest"]
    again = cli(
        "image",
        "--base",
        "scratch",
        "--manifest-path",
        demo_ws,
        "-p",
        "linux-64",
        "--tag",
        tag,
        "--push",
        "--cache-dir",
        cache.root,
        "--json",
    )
    assert json.loads(again.stdout)["push"]["uploaded"] == []  # everything already there


def test_base_image_pulled_from_a_registry(
    demo_ws: Path, cache: DownloadCache, registry: Registry, busybox_base: Path, tmp_path: Path
) -> None:
    skopeo(
        "copy",
        "--dest-tls-verify=false",
        f"oci:{busybox_base}:latest",
        f"docker://{registry.host}/base/busybox:1",
    )
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    result = build_image(
        resolved,
        ImageOptions(
            tag="demo:b", base=f"{registry.host}/base/busybox:1", dest=tmp_path / "i", cache=cache
        ),
    )
    assert result.base_layers == 1
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'i'}:b", str(bundle)],
        check=True,
        capture_output=True,
    )
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()


def test_rebuild_after_one_package_changed_pushes_only_its_layer(
    fresh_demo_ws: Path, registry: Registry, tmp_path: Path
) -> None:
    cache = DownloadCache(tmp_path / "cache")
    tag = f"{registry.host}/demo/bump:latest"
    channel = fresh_demo_ws.parent / "channel"

    def rebuild(specs: list[PackageSpec]) -> ImageResult:
        shutil.rmtree(channel)
        build_channel(channel, specs)
        lock_workspace(fresh_demo_ws, channel, DEMO_ENVIRONMENTS, ("linux-64", "linux-aarch64"))
        resolved = load_workspace(fresh_demo_ws).resolve("default", "linux-64")
        return build_image(resolved, ImageOptions(base="scratch", tag=tag, push=True, cache=cache))

    first = build_image(
        load_workspace(fresh_demo_ws).resolve("default", "linux-64"),
        ImageOptions(base="scratch", tag=tag, push=True, cache=cache),
    )
    assert first.push is not None and len(first.push.uploaded) == 6  # 5 layers + config

    # greet 1.0.1 with the very same files: its layer is byte-identical, only the top changes
    bumped = with_bumped(demo_specs(), "greet")
    second = rebuild(bumped)
    assert second.push is not None
    assert [x.digest for x in second.layers[:-1]] == [x.digest for x in first.layers[:-1]]
    assert set(second.push.uploaded) == {second.layers[-1].digest, second.config_digest}

    # greet 1.0.2 whose script changed: exactly its layer + the top layer + config are new
    before = registry.blob_digests()
    changed_specs = [
        dataclasses.replace(
            s,
            version="1.0.2",
            files={"bin/greet": str(s.files["bin/greet"]).replace("1.0.0", "1.0.2")},
        )
        if s.name == "greet"
        else s
        for s in demo_specs()
    ]
    third = rebuild(changed_specs)
    assert third.push is not None
    greet = next(x for x in third.layers if x.packages[0].startswith("greet-1.0.2"))
    top = third.layers[-1]
    assert {x.digest for x in third.layers if not x.cached} == {greet.digest, top.digest}
    assert set(third.push.uploaded) == {greet.digest, top.digest, third.config_digest}
    assert len(third.push.skipped) == 3
    assert third.push.bytes_uploaded < first.push.bytes_uploaded
    # the registry's own storage agrees: exactly those blobs + the new manifest are new
    assert registry.blob_digests() - before == {
        greet.digest,
        top.digest,
        third.config_digest,
        third.manifest_digest,
    }
    status, _, digest = registry.manifest("demo/bump", "latest")
    assert (status, digest) == (200, third.manifest_digest)


def test_push_cut_off_midway_then_retry_finishes(
    demo_ws: Path, cache: DownloadCache, registry: Registry
) -> None:
    proxy = CutProxy(registry.host, allow_puts=2)
    resolved = load_workspace(demo_ws).resolve("extra", "linux-64")
    try:
        with pytest.raises(ContainerError, match="unreachable") as info:
            build_image(
                resolved,
                ImageOptions(
                    base="scratch", tag=f"{proxy.host}/demo/cut:1", push=True, cache=cache
                ),
            )
        assert "\n" not in str(info.value)
        assert proxy.cut and proxy.puts == 2
    finally:
        proxy.close()
    status, _, _ = registry.manifest("demo/cut", "1")
    assert status == 404  # no tag pointing at missing blobs
    result = build_image(
        resolved,
        ImageOptions(base="scratch", tag=f"{registry.host}/demo/cut:1", push=True, cache=cache),
    )
    assert result.push is not None
    assert len(result.push.skipped) == 2 and len(result.push.uploaded) == 5
    status, body, digest = registry.manifest("demo/cut", "1")
    assert (status, digest) == (200, result.manifest_digest)
    stored = registry.blob_digests()
    assert all(layer["digest"] in stored for layer in json.loads(body)["layers"])


def test_auth_registry_accepts_and_refuses_credentials(
    demo_ws: Path,
    cache: DownloadCache,
    auth_registry: tuple[Registry, str, str],
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    registry, user, password = auth_registry
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))  # no stray config.json
    tag = f"{registry.host}/secure/demo:1"
    args = (
        "image",
        "--base",
        "scratch",
        "--manifest-path",
        demo_ws,
        "-p",
        "linux-64",
        "--tag",
        tag,
        "--push",
        "--cache-dir",
        cache.root,
    )
    monkeypatch.setenv("PIXI_DEPLOY_REGISTRY_PASSWORD", "wrong-password")
    refused = cli(*args, "--registry-user", user)
    one_line_error(refused, 9, "refused", user)
    assert "wrong-password" not in refused.stderr + refused.stdout
    anonymous = cli(*args)
    one_line_error(anonymous, 9, "refused anonymous")
    monkeypatch.setenv("PIXI_DEPLOY_REGISTRY_PASSWORD", password)
    ok = cli(*args, "--registry-user", user)
    assert ok.exit_code == 0, ok.stderr
    assert password not in ok.stdout + ok.stderr
    # docker's config.json works as well
    monkeypatch.delenv("PIXI_DEPLOY_REGISTRY_PASSWORD")

    (tmp_path / "docker").mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {registry.host: {"auth": auth}}})
    )
    assert cli(*args).exit_code == 0


def test_failures_are_one_line(
    demo_ws: Path, cache: DownloadCache, cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    base = ("image", "--manifest-path", demo_ws, "-p", "linux-64", "--cache-dir", cache.root, "--base", "scratch")  # fmt: skip
    one_line_error(cli(*base, "-e", "nope", "--tag", "demo:1"), 2, "unknown environment 'nope'")
    one_line_error(cli(*base, "--tag", "Demo:1"), 9, "invalid image name")
    one_line_error(cli(*base, "--tag", "demo:bad tag!"), 9, "invalid image tag")
    one_line_error(cli(*base, "--tag", "demo"), 9, "has no tag")
    closed = free_port()
    one_line_error(
        cli(*base, "--tag", f"127.0.0.1:{closed}/demo:1", "--push"),
        9,
        f"registry 127.0.0.1:{closed} is unreachable",
    )
    one_line_error(cli(*base, "--tag", "demo:1", "--output", "zip"), 9, "unknown output")
    one_line_error(
        cli(*base, "--tag", "demo:1", "--base", f"oci:{tmp_path}:x"), 9, "not an OCI image layout"
    )
    one_line_error(cli(*base, "--tag", "demo:1", "--prefix", "relative/env"), 9, "--prefix")
    assert not os.listdir(tmp_path)


def test_image_entrypoint_activates_the_manifest_activation(
    busybox_base: Path, tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    """The entrypoint sources activate.sh: the manifest's scripts (carried in the image) and
    env, and pixi's variables, as `pixi shell-hook` has them (tests/test_activation.py)."""
    workspace = make_activation_workspace(tmp_path / "ws")
    dest = tmp_path / "act.oci"
    built = cli(
        "image", "--manifest-path", workspace, "-e", "cuda", "-p", "linux-64", "--tag",
        "act:1", "--base", f"{busybox_base}:latest", "--dest", dest, "--cache-dir",
        tmp_path / "cache",
    )  # fmt: skip
    assert built.exit_code == 0, built.stderr
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{dest}:1", str(bundle)], check=True, capture_output=True
    )
    prefix = "/app/.pixi/envs/cuda"
    run = subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(bundle / "rootfs"), "/app/entrypoint.sh",
         "sh", "-c", "echo $ORDER/$FOO_VAR/$PIXI_PROJECT_ROOT/$CONDA_DEFAULT_ENV"],
        capture_output=True, text=True, env={"PATH": "/bin"}, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == (
        f"cuda1(after-package) linux(after-package)/cuda1/{prefix}/share/pixi-deploy/project"
        "/acttest:cuda"
    )


def test_default_base_is_a_glibc_distribution_pulled_with_the_users_auth(
    demo_ws: Path,
    cache: DownloadCache,
    auth_registry: tuple[Registry, str, str],
    busybox_base: Path,
    cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """No --base: Ubuntu noble (glibc), or the site's copy of it named in $PIXI_DEPLOY_IMAGE_BASE
    (here the auth registry, standing in for Docker Hub), pulled with docker's config.json;
    --base scratch still builds, with a warning on stderr."""
    monkeypatch.delenv(BASE_VARIABLE, raising=False)
    assert default_base() == "docker.io/library/ubuntu:24.04"
    assert ImageOptions(tag="x:1").base is None
    registry, user, password = auth_registry
    mirror = f"{registry.host}/library/ubuntu:24.04"
    skopeo(
        "copy", "--dest-tls-verify=false", f"--dest-creds={user}:{password}",
        f"oci:{busybox_base}:latest", f"docker://{mirror}",
    )  # fmt: skip
    monkeypatch.setenv(BASE_VARIABLE, mirror)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker"))
    common = ("image", "--manifest-path", demo_ws, "-p", "linux-64", "--tag", "demo:1", "--cache-dir", cache.root, "--json")  # fmt: skip
    anonymous = cli(*common, "--dest", tmp_path / "a.oci")
    one_line_error(anonymous, 9, f"cannot pull the base image {mirror}")
    assert not (tmp_path / "a.oci").exists()
    (tmp_path / "docker").mkdir()
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    (tmp_path / "docker" / "config.json").write_text(
        json.dumps({"auths": {registry.host: {"auth": auth}}})
    )
    built = cli(*common, "--dest", tmp_path / "b.oci")
    assert built.exit_code == 0, built.stderr
    data = json.loads(built.stdout)
    assert data["base_layers"] == 1 and "warning" not in built.stderr
    for extra in ((), ("--json",)):
        scratch = cli(*common[:-1], *extra, "--base", "scratch", "--dest", tmp_path / f"s{len(extra)}.oci")  # fmt: skip
        assert scratch.exit_code == 0, scratch.stderr
        assert "warning: --base scratch: the image has no libc and no dynamic loader" in " ".join(scratch.stderr.split())  # fmt: skip
