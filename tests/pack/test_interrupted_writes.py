"""SIGTERM or SIGINT at any moment of `pack`, `pack --self-extracting` or a path dependency's
wheel build leaves nothing behind: the removal of each partial file and work folder is armed
before the file or folder exists (`scratch.discarded_on_exit`, `scratch.scratch_folder`), and
an output appears only complete. kill -9 leaves only what the next run removes.

The moments are random (seeded, printed on failure): half from the process's start, half from
when its work has visibly begun. Nothing here asserts a duration."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.files import age
from pixi_deploy import api
from pixi_deploy.testing.channel import build_channel, lock_workspace, synthetic_specs
from pixi_deploy.testing.python_pkg import make_python_workspace

CODE = "import sys; from pixi_deploy.cli import main; sys.exit(main(sys.argv[1:]))"
ROUNDS = 8
EXTRA_ROUNDS = 10  # at most, until one signal lands while the work is under way


def _cli(*args: str | Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CODE, *map(str, args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _leftovers(folder: Path, marks: tuple[str, ...]) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if any(m in p.name for m in marks))


@pytest.fixture(scope="module")
def sizeable_ws(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 packages, 80 MB installed: writing takes long enough for a signal to land in it."""
    root = tmp_path_factory.mktemp("sizeable")
    specs = synthetic_specs(30, 80_000_000, seed=3)
    build_channel(root / "channel", specs)
    names = [s.name for s in specs]
    lock_workspace(root / "ws", root / "channel", {"default": names}, ["linux-64"])
    return root / "ws"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PIXI_DEPLOY_CACHE_DIR": str(tmp_path / "cache"),
        "HOME": str(tmp_path / "home"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["pack", "self-extracting", "wheel-build"])
def test_a_signal_at_a_random_moment_leaves_nothing_behind(
    kind: str, tmp_path: Path, sizeable_ws: Path, env: dict[str, str]
) -> None:
    if kind == "wheel-build":
        workspace = make_python_workspace(tmp_path / "py")
        out_dir = tmp_path / "cache" / "built"  # where the build's work folder lives
        marks: tuple[str, ...] = (".build-",)
    else:
        workspace = sizeable_ws
        out_dir = tmp_path / "out"
        marks = (".partial", ".work-", ".owner")

    def command(i: int) -> list[str | Path]:
        if kind == "wheel-build":  # a fresh build each time: the cache entry is removed first
            return ["pack", "--manifest-path", workspace, "-o", out_dir.parent / f"p{i}.tar"]
        extra = ["--self-extracting"] if kind == "self-extracting" else ["--compress"]
        name = f"env{i}.sh" if kind == "self-extracting" else f"env{i}.tar.zst"
        return [
            "pack",
            "--manifest-path",
            workspace,
            "-p",
            "linux-64",
            *extra,
            "-o",
            out_dir / name,
        ]

    warm = subprocess.run(
        [sys.executable, "-c", CODE, *map(str, command(0))], env=env, capture_output=True
    )  # warms the download cache; its duration bounds the random moments
    assert warm.returncode == 0, warm.stderr.decode()
    rng = random.Random(14)
    if kind == "wheel-build":
        subprocess.run(["rm", "-rf", str(out_dir)], check=True)
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", CODE, *map(str, command(0))], env=env, check=True)
    span = time.monotonic() - started
    killed_mid_work = 0
    for i in range(1, ROUNDS + EXTRA_ROUNDS + 1):
        if i > ROUNDS and killed_mid_work:
            break  # else, under load, more rounds that signal as soon as the work has begun
        if kind == "wheel-build":
            subprocess.run(["rm", "-rf", str(out_dir)], check=True)
        sig = signal.SIGTERM if i % 4 else signal.SIGINT
        delay = rng.uniform(0, span * 1.1) if i <= ROUNDS else 0.0
        from_work = i % 2 == 0 or i > ROUNDS
        proc = _cli(*command(i), env=env)
        if from_work:
            deadline = time.monotonic() + 120
            while not _leftovers(out_dir, marks) and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
            delay *= 0.3
        time.sleep(delay)
        mid_work = bool(_leftovers(out_dir, marks))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        where = (
            f"round {i}: {sig.name} after {delay:.3f}s (from {'work' if from_work else 'start'})"
        )
        assert _leftovers(out_dir, marks) == [], where
        assert b"Traceback" not in err, (where, err.decode())
        if kind != "wheel-build":
            output = command(i)[-1]
            assert isinstance(output, Path)
            if output.exists():  # complete (the signal may come after the rename), or absent
                _assert_complete(output, tmp_path / f"check{i}", where)
        killed_mid_work += mid_work and proc.returncode != 0
    assert killed_mid_work, f"no signal landed while the work was under way in {i} rounds"


def _assert_complete(output: Path, scratch: Path, where: str) -> None:
    if output.suffix == ".sh":
        check = subprocess.run(["sh", str(output), "--check"], capture_output=True, text=True)
        assert check.returncode == 0 and "payload OK" in check.stdout, (where, check.stderr)
        return
    api.unpack(output, scratch)  # verifies every member against the metadata and the lock
    assert (scratch / "conda-meta").is_dir(), where


def test_kill_9_leaves_only_what_the_next_run_removes(
    tmp_path: Path, demo_ws: Path, env: dict[str, str]
) -> None:
    out_dir = tmp_path / "out"
    args = ["pack", "--manifest-path", demo_ws, "-p", "linux-64", "--self-extracting"]
    proc = _cli(*args, "-o", out_dir / "env.sh", env=env)
    deadline = time.monotonic() + 120
    while not _leftovers(out_dir, (".work-",)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.kill()
    proc.wait(timeout=60)
    left = _leftovers(out_dir, (".work-",))
    if not left:
        pytest.skip("the installer was written before kill -9 arrived")
    for name in left:
        age(out_dir / name)
    done = subprocess.run(
        [sys.executable, "-c", CODE, *map(str, args), "-o", out_dir / "env.sh"],
        env=env, capture_output=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    assert _leftovers(out_dir, (".work-",)) == []
