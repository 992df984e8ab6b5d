"""`pack --self-extracting`: one shell script that verifies, unpacks, relocates and installs an
environment with only POSIX tools: no python, no pixi, no network."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pixi_deploy.pack import DownloadCache
from pixi_deploy.pack.inject import prepare_environment
from pixi_deploy.pack.selfextract import PLACEHOLDER, write_self_extracting
from pixi_deploy.testing.channel import BINARY_PLACEHOLDER, TEXT_PLACEHOLDER
from pixi_deploy.testing.python_pkg import make_python_workspace
from pixi_deploy.workspace import load_workspace

#: Exactly the tools the script's header names (plus sh); sha256sum deliberately left out.
TOOLS = ("sh", "tar", "dd", "cksum", "sed", "mkdir", "mv", "rm", "chmod", "ln", "cat")


@pytest.fixture(scope="module")
def installer(
    demo_ws: Path, cache: DownloadCache, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    resolved = load_workspace(demo_ws).resolve("default", "linux-64")
    out = tmp_path_factory.mktemp("sx") / "env.sh"
    result = write_self_extracting(resolved, out, cache=cache)
    assert result.path == out and result.text_files >= 2 and result.binary_strings == 2
    return out


def _install(
    script: Path, *args: str | Path, path: str = "/usr/bin:/bin"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", "-i", f"PATH={path}", "sh", str(script), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _activate_and(prefix: Path, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", "sh", "-c", f'. "{prefix}/activate.sh" && {command}'],
        capture_output=True,
        text=True,
        check=False,
    )


def _original_libgreet(demo_ws: Path) -> bytes:
    import tarfile

    archive = demo_ws.parent / "channel/linux-64/libgreet-1.2.0-h0_0.tar.bz2"
    with tarfile.open(archive) as tar:
        member = tar.extractfile("lib/libgreet.so")
        assert member is not None
        return member.read()


def test_installs_with_posix_tools_only(installer: Path, demo_ws: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    for tool in TOOLS:
        found = shutil.which(tool)
        assert found, tool
        os.symlink(found, tools / tool)
    target = tmp_path / "site" / "env_1.0+x@a=b,c%e"
    run = _install(installer, "--target", target, path=str(tools))
    assert run.returncode == 0, run.stderr
    assert f'activate with: . "{target}/activate.sh"' in run.stdout

    greet = _activate_and(target, "greet")
    assert greet.returncode == 0, greet.stderr
    assert f"hello from greet 1.0.0 at {target}\n" in greet.stdout
    assert f"config: {target}/etc/greet.conf" in greet.stdout  # activate.d ran, path quoted

    original = _original_libgreet(demo_ws)
    patched = (target / "lib/libgreet.so").read_bytes()
    assert len(patched) == len(original)
    assert f"{target}/share/libgreet/README".encode() + b"\0" in patched
    assert f"{target}/lib".encode() + b"\0" in patched
    # everything outside the two C strings is untouched
    start = original.index(BINARY_PLACEHOLDER.encode())
    assert patched[:start] == original[:start]
    assert patched[-1000:] == original[-1000:]
    for path in target.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert PLACEHOLDER.encode() not in data, path
            if path.parent.name != "conda-meta":
                assert TEXT_PLACEHOLDER.encode() not in data, path
    assert not (target / ".pixi-deploy-relocate").exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    # no sha256sum here: the records stay valid and leave out what cannot be computed
    assert "no sha256sum or shasum here" in run.stderr
    (libgreet,) = target.glob("conda-meta/libgreet-*.json")
    entry = next(
        e for e in json.loads(libgreet.read_text())["paths_data"]["paths"]
        if e["_path"] == "lib/libgreet.so"
    )  # fmt: skip
    assert entry["size_in_bytes"] == len(patched) and "sha256_in_prefix" not in entry
    for record in target.glob("conda-meta/*.json"):
        assert "@pdsx-" not in record.read_text(), record


def test_default_target_is_beside_the_script(installer: Path, tmp_path: Path) -> None:
    copy = tmp_path / "dl" / "env.sh"
    copy.parent.mkdir()
    shutil.copy(installer, copy)
    run = _install(copy)
    assert run.returncode == 0, run.stderr
    (installed,) = [p for p in copy.parent.iterdir() if p.is_dir()]
    assert installed.name.startswith("demo-default-")
    assert f"at {installed}" in _activate_and(installed, "greet").stdout


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_file_is_refused_before_anything_is_written(
    installer: Path, tmp_path: Path, damage: str
) -> None:
    data = bytearray(installer.read_bytes())
    if damage == "truncate":
        data = data[: len(data) - 5000]
    else:
        data[-3000] ^= 0xFF
    bad = tmp_path / "env.sh"
    bad.write_bytes(bytes(data))
    target = tmp_path / "target"
    run = _install(bad, "--target", target)
    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert "truncated or corrupt" in lines[0] or "corrupt" in lines[0]
    assert "nothing was installed" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env.sh"]
    check = _install(bad, "--check")
    assert check.returncode != 0


def test_bad_targets_are_refused(installer: Path, tmp_path: Path) -> None:
    too_long = tmp_path / ("x" * (len(PLACEHOLDER) + 5))
    run = _install(installer, "--target", too_long)
    assert run.returncode == 2 and "at most" in run.stderr
    assert not too_long.exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("mine")
    run = _install(installer, "--target", busy)
    assert run.returncode == 5 and "not empty" in run.stderr
    assert [p.name for p in busy.iterdir()] == ["file"]
    for bad in ("it's", "with space", "a$b", 'q"uote', "a:b"):
        run = _install(installer, "--target", tmp_path / bad)
        assert run.returncode == 2 and "may contain only" in run.stderr, bad
        assert not (tmp_path / bad).exists()
    check = _install(installer, "--check")
    assert check.returncode == 0 and "payload OK" in check.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _install(installer, "--target", empty).returncode == 0  # an empty folder is fine
    assert (empty / "activate.sh").is_file()


def test_python_environment_with_path_dependency(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli
) -> None:
    """Console scripts of wheels (built from a path dependency) run after relocation."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIXI_DEPLOY_CACHE_DIR", str(tmp_path / "cache"))
    ws = make_python_workspace(tmp_path / "py")
    out = tmp_path / "py-env.sh"
    result = cli("pack", "--manifest-path", ws, "--self-extracting", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert os.access(out, os.X_OK)
    target = tmp_path / "deep" / "place"
    run = _install(out, "--target", target)
    assert run.returncode == 0, run.stderr
    hello = _activate_and(
        target, "myproj-hello && python -c 'import myproj; print(myproj.__file__)'"
    )
    assert hello.returncode == 0, hello.stderr
    assert "hello from myproj 0.1.0" in hello.stdout
    assert f"prefix {target}\n" in hello.stdout
    assert f"{target}/lib/python3.11/site-packages/myproj/__init__.py" in hello.stdout
    expected = prepare_environment(
        load_workspace(ws).resolve(), DownloadCache(tmp_path / "cache")
    ).lock_hash
    assert expected in out.read_text(errors="replace")[:4096]
