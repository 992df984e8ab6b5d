"""Path (editable) PyPI dependencies: built into wheels at pack time, installed non-editable,
their content part of the environment's identity; sdists only with --build-sdists."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixi_deploy.errors import FetchError, PackError
from pixi_deploy.pack import DownloadCache, read_metadata, write_pack
from pixi_deploy.pack.inject import prepare_environment
from pixi_deploy.pack.pathdeps import wheel_content_hash
from pixi_deploy.store import LocalStore
from pixi_deploy.testing.python_pkg import (
    add_pypi_to_lock,
    make_python_workspace,
    write_python_project,
)
from pixi_deploy.workspace import load_workspace


@pytest.fixture
def py_ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no pixi/rattler config of this machine
    monkeypatch.setenv("PIXI_DEPLOY_TEST_BUILD_LOG", str(tmp_path / "builds.log"))
    return make_python_workspace(tmp_path / "py")


def _builds(tmp_path: Path) -> int:
    log = tmp_path / "builds.log"
    return len(log.read_text().splitlines()) if log.exists() else 0


def _run(prefix: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", f'. "{prefix}/activate.sh" && {command}'],
        capture_output=True,
        text=True,
        check=False,
    )


def test_path_dependency_deploys_as_a_wheel(py_ws: Path, tmp_path: Path) -> None:
    resolved = load_workspace(py_ws).resolve("default", "linux-64")
    assert [p.location for p in resolved.pypi_packages if p.is_path] == ["./myproj"]
    cache = DownloadCache(tmp_path / "cache")
    prepared = prepare_environment(resolved, cache)
    (built,) = prepared.pypi_packages
    assert built.origin == "path:./myproj" and built.identity and built.sha256
    assert built.location.endswith("myproj-0.1.0-py3-none-any.whl")
    assert prepared.lock_hash != resolved.lock_hash

    meta = LocalStore(tmp_path / "store", cache).deploy(prepared)
    prefix = Path(meta.deployment_path)
    run = _run(prefix, "myproj-hello")
    assert run.returncode == 0, run.stderr
    assert f"prefix {prefix}" in run.stdout and "hello from myproj 0.1.0" in run.stdout
    site = prefix / "lib/python3.11/site-packages"
    installed = site / "myproj" / "__init__.py"
    assert installed.is_file() and not installed.is_symlink()  # a copy, not editable
    assert not list(site.glob("*.pth")) and not list(site.glob("__editable__*"))
    assert (site / "myproj-0.1.0.dist-info" / "INSTALLER").read_text() == "pixi-deploy\n"


def test_identity_follows_the_code_and_builds_are_cached(py_ws: Path, tmp_path: Path) -> None:
    cache = DownloadCache(tmp_path / "cache")
    workspace = load_workspace(py_ws)

    def hash_now() -> str:
        return prepare_environment(workspace.resolve("default", "linux-64"), cache).lock_hash

    first = hash_now()
    assert _builds(tmp_path) == 1
    assert hash_now() == first and _builds(tmp_path) == 1  # unchanged tree: no rebuild

    (py_ws / "myproj" / "README.md").write_text("# not part of the wheel\n")
    assert hash_now() == first  # rebuilt (zip timestamps differ), same content: same identity
    assert _builds(tmp_path) == 2

    init = py_ws / "myproj" / "myproj" / "__init__.py"
    init.write_text(init.read_text().replace("hello", "bonjour"))
    changed = hash_now()
    assert changed != first and _builds(tmp_path) == 3
    init.write_text(init.read_text().replace("bonjour", "hello"))
    assert hash_now() == first  # back to the old code: back to the old environment


def test_wheel_content_hash_ignores_zip_details(tmp_path: Path) -> None:
    files = {"pkg/__init__.py": b"x = 1\n", "pkg-1.dist-info/RECORD": b"whatever"}
    for name, stamp, method in (
        ("a.whl", (2020, 1, 1, 0, 0, 0), zipfile.ZIP_STORED),
        ("b.whl", (2024, 5, 6, 7, 8, 10), zipfile.ZIP_DEFLATED),
    ):
        with zipfile.ZipFile(tmp_path / name, "w", method) as out:
            for path in reversed(files) if name == "b.whl" else files:
                data = files[path] + (b"!" if name == "b.whl" and "RECORD" in path else b"")
                out.writestr(zipfile.ZipInfo(path, date_time=stamp), data)
    assert (tmp_path / "a.whl").read_bytes() != (tmp_path / "b.whl").read_bytes()
    assert wheel_content_hash(tmp_path / "a.whl") == wheel_content_hash(tmp_path / "b.whl")


def test_inspect_and_pack_metadata_show_path_dependencies(
    py_ws: Path, tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli("inspect", "--manifest-path", py_ws, "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["environments"]["default"]["platforms"]["linux-64"]
    assert summary["path_dependencies"] == [
        {"name": "myproj", "path": "./myproj", "editable": True}
    ]

    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "p.tar"
    result = cli("pack", "--manifest-path", py_ws, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    metadata = read_metadata(out)
    (entry,) = metadata.extra["path_dependencies"]
    assert entry["name"] == "myproj" and entry["source"] == "path:./myproj"
    assert json.loads(result.stdout)["lock_hash"] == metadata.lock_hash
    assert any(f.path == "pypi/myproj-0.1.0-py3-none-any.whl" for f in metadata.files)


def test_broken_path_dependency_is_one_clear_line(py_ws: Path, tmp_path: Path, cli) -> None:
    (py_ws / "myproj" / "FAIL_BUILD").write_text("myproj: cannot compile the frobnicator\n")
    resolved = load_workspace(py_ws).resolve("default", "linux-64")
    with pytest.raises(PackError) as caught:
        prepare_environment(resolved, DownloadCache(tmp_path / "cache"))
    message = str(caught.value)
    assert "path dependency 'myproj'" in message
    assert "cannot compile the frobnicator" in message
    assert "\n" not in message
    result = cli("pack", "--manifest-path", py_ws, "-o", tmp_path / "x.tar")
    assert result.exit_code == PackError.exit_code
    assert "cannot compile the frobnicator" in result.stderr
    assert not (tmp_path / "x.tar").exists()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_sdists_need_build_sdists(
    tmp_path: Path, served: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    base, www = served
    project = write_python_project(tmp_path / "src" / "fromsdist-2.0", "fromsdist", "2.0")
    sdist = www / "fromsdist-2.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(project, "fromsdist-2.0")
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    ws = make_python_workspace(tmp_path / "ws", path_dependencies={})
    url = f"{base}/fromsdist-2.0.tar.gz"
    add_pypi_to_lock(ws, [("fromsdist", "2.0", url)], sha256={url: digest})
    resolved = load_workspace(ws).resolve("default", "linux-64")
    cache = DownloadCache(tmp_path / "cache")

    with pytest.raises(FetchError, match=r"source distribution .*--build-sdists"):
        prepare_environment(resolved, cache)
    with pytest.raises(FetchError, match="--build-sdists"):
        write_pack(resolved, tmp_path / "x.tar", cache=cache)

    prepared = prepare_environment(resolved, cache, build_sdists=True)
    (built,) = prepared.pypi_packages
    assert built.origin == "sdist:fromsdist-2.0.tar.gz"
    assert built.location.endswith("fromsdist-2.0-py3-none-any.whl")
    meta = LocalStore(tmp_path / "store", cache).deploy(prepared)
    run = _run(Path(meta.deployment_path), "fromsdist-hello")
    assert run.returncode == 0 and "hello from fromsdist 2.0" in run.stdout, run.stderr

    shutil.rmtree(www)  # built once: the wheel comes from the cache now
    again = prepare_environment(
        load_workspace(ws).resolve("default", "linux-64"), cache, build_sdists=True
    )
    assert again.lock_hash == prepared.lock_hash
