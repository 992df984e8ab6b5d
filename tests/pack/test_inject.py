"""`--inject FILE`: local conda packages and wheels added to a locked environment, checked
against its dependencies and constraints, and part of its identity."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import zipfile
from pathlib import Path

import pytest

from pixi_deploy.errors import PackError
from pixi_deploy.pack import DownloadCache, read_metadata, unpack
from pixi_deploy.pack.inject import inject_files, prepare_environment
from pixi_deploy.store import LocalStore
from pixi_deploy.testing.channel import PackageSpec, build_package
from pixi_deploy.testing.python_pkg import make_python_workspace
from pixi_deploy.workspace import load_workspace


def _plugin(out: Path, **changes: object) -> Path:
    spec = PackageSpec(
        name="greet-plugin",
        version="0.5.0",
        depends=["greet >=1"],
        files={"share/greet-plugin/plugin.txt": "a locally built plugin\n"},
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return build_package(spec, out)


def _run(prefix: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", f'. "{prefix}/activate.sh" && {command}'],
        capture_output=True,
        text=True,
        check=False,
    )


def test_inject_a_conda_package_deploys_it_and_changes_identity(
    demo_ws: Path, cache: DownloadCache, tmp_path: Path
) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    plugin = _plugin(tmp_path / "built")
    injected = inject_files(resolved, [plugin])
    assert "greet-plugin" in {r.name.normalized for r in injected.conda_records}
    assert injected.lock_hash != resolved.lock_hash
    assert inject_files(resolved, [plugin]).lock_hash == injected.lock_hash  # deterministic
    assert injected.provenance() == {"injected": [plugin.name]}

    meta = LocalStore(tmp_path / "store", cache).deploy(injected)
    prefix = Path(meta.deployment_path)
    assert (prefix / "share/greet-plugin/plugin.txt").read_text() == "a locally built plugin\n"
    assert (prefix / "conda-meta" / "greet-plugin-0.5.0-h0_0.json").is_file()
    assert meta.lock_hash == injected.lock_hash

    # a different build of the same file name is a different environment
    other = _plugin(tmp_path / "other", files={"share/greet-plugin/plugin.txt": "changed\n"})
    assert inject_files(resolved, [other]).lock_hash != injected.lock_hash


def test_inject_replaces_a_locked_package_when_it_fits(demo_ws: Path, tmp_path: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    newer = build_package(
        PackageSpec(name="libgreet", version="1.3.0", files={"lib/libgreet-1.3": "new\n"}),
        tmp_path,
    )
    injected = inject_files(resolved, [newer])
    versions = {r.name.normalized: str(r.version) for r in injected.conda_records}
    assert versions["libgreet"] == "1.3.0"
    assert len(injected.conda_records) == len(resolved.conda_records)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        # greet (locked) depends on libgreet >=1.2: an older injected libgreet breaks it
        (
            {"name": "libgreet", "version": "1.1.0"},
            r"injected libgreet 1\.1\.0 \(h0_0\) conflicts with greet 1\.0\.0 \(h0_0\): "
            r"greet 1\.0\.0 \(h0_0\) depends on 'libgreet >=1\.2'",
        ),
        # the injected package's own dependency is not satisfied by the locked greet
        (
            {"depends": ["greet >=2"]},
            r"injected greet-plugin 0\.5\.0 \(h0_0\) conflicts with greet 1\.0\.0 \(h0_0\).*"
            r"depends on 'greet >=2'",
        ),
        # ... or not there at all
        ({"depends": ["numpy >=1"]}, r"depends on 'numpy >=1', which the environment does not"),
        # its constraints must hold for what is locked
        ({"constrains": ["libgreet <1"]}, r"constrains 'libgreet <1'"),
        # and it must be built for the environment's platform
        ({"subdir": "linux-aarch64"}, r"built for linux-aarch64, the environment is for linux-64"),
    ],
)
def test_inject_conflicts_are_clear_errors(
    demo_ws: Path, tmp_path: Path, spec: dict[str, object], expected: str
) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    if spec.get("name") == "libgreet":
        path = build_package(PackageSpec(name="libgreet", version="1.1.0"), tmp_path)
    else:
        path = _plugin(tmp_path, **spec)
    with pytest.raises(PackError, match=expected) as caught:
        inject_files(resolved, [path])
    assert "\n" not in str(caught.value)


def test_inject_rejects_other_files(demo_ws: Path, tmp_path: Path) -> None:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    junk = tmp_path / "notes.txt"
    junk.write_text("hi")
    with pytest.raises(PackError, match="not a conda package or a wheel"):
        inject_files(resolved, [junk])
    broken = tmp_path / "broken-1.0-h0_0.conda"
    broken.write_bytes(b"not a zip")
    with pytest.raises(PackError, match="not a readable conda package"):
        inject_files(resolved, [broken])
    with pytest.raises(PackError, match="no such file"):
        inject_files(resolved, [tmp_path / "missing.conda"])


def _wheel(folder: Path, name: str = "extra_tool", version: str = "1.0") -> Path:
    files = {
        f"{name}.py": b"def main():\n    print('extra tool says hi')\n",
        f"{name}-{version}.dist-info/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
        ),
        f"{name}-{version}.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
        f"{name}-{version}.dist-info/entry_points.txt": (
            f"[console_scripts]\nextra-tool = {name}:main\n".encode()
        ),
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{name}-{version}.dist-info/RECORD,,")
    files[f"{name}-{version}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as out:
        for path, data in files.items():
            out.writestr(path, data)
    return wheel


def test_cli_pack_and_deploy_with_injected_wheel_and_package(
    tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    ws = make_python_workspace(tmp_path / "py", path_dependencies={})
    wheel = _wheel(tmp_path / "wheels")
    plugin = _plugin(tmp_path / "built")

    out = tmp_path / "p.tar"
    args = ["--manifest-path", ws, "--inject", wheel, "--inject", plugin]
    result = cli("pack", *args, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    metadata = read_metadata(out)
    assert metadata.extra["injected"] == sorted([wheel.name, plugin.name])
    assert {f.path for f in metadata.files} >= {f"pypi/{wheel.name}", f"conda/{plugin.name}"}
    assert metadata.lock_hash != load_workspace(ws).resolve().lock_hash
    unpacked = unpack(out, tmp_path / "env").prefix
    assert _run(unpacked, "extra-tool").stdout == "extra tool says hi\n"

    result = cli("deploy", *args, "--base", tmp_path / "store", "--json")
    assert result.exit_code == 0, result.stderr
    deployed = json.loads(result.stdout)
    assert deployed["lock_hash"] == metadata.lock_hash
    prefix = Path(deployed["deployment_path"])
    run = _run(prefix, "extra-tool && cat $CONDA_PREFIX/share/greet-plugin/plugin.txt")
    assert run.stdout == "extra tool says hi\na locally built plugin\n", run.stderr

    # without the injected files it is another environment
    result = cli("deploy", "--manifest-path", ws, "--base", tmp_path / "store", "--json")
    assert json.loads(result.stdout)["lock_hash"] != metadata.lock_hash


def test_prepare_keeps_an_injected_wheel_over_a_path_dependency_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    ws = make_python_workspace(tmp_path / "py")
    wheel = _wheel(tmp_path / "wheels", "myproj", "9.9")
    resolved = load_workspace(ws).resolve("default", "linux-64")
    prepared = prepare_environment(resolved, DownloadCache(tmp_path / "cache"), inject=[wheel])
    (package,) = prepared.pypi_packages
    assert (package.version, package.origin) == ("9.9", "inject")
