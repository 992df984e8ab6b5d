"""Scratch folders: removed on exit, and removed by the next user when their owner was killed."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.files import age
from pixi_deploy import scratch
from pixi_deploy.scratch import prune_abandoned, scratch_folder


@contextmanager
def owner(root: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """Another process holding a scratch folder under ``root`` (with a file in it) until killed."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from pixi_deploy.scratch import scratch_folder
        with scratch_folder(Path({str(root)!r}), "deploy-") as folder:
            (folder / "half-written").write_bytes(b"x" * 1000)
            print(folder, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield proc, Path(proc.stdout.readline().strip())
    finally:
        proc.kill()
        proc.wait()


def test_removed_on_exit_and_on_error(tmp_path: Path) -> None:
    with scratch_folder(tmp_path, "deploy-") as folder:
        (folder / "f").write_text("x")
        assert folder.is_dir() and folder.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), scratch_folder(tmp_path, "deploy-") as folder:
        (folder / "f").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_owners_folder_goes_with_the_next_use(tmp_path: Path) -> None:
    with owner(tmp_path) as (proc, folder):
        age(folder)
        assert prune_abandoned(tmp_path, "deploy-") == []  # its owner is alive: kept
        assert (folder / "half-written").is_file()
        proc.kill()  # kill -9: no finally runs
        proc.wait()
    assert (folder / "half-written").is_file()
    with scratch_folder(tmp_path, "deploy-") as mine:
        assert not folder.exists()
        assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name, mine.name + ".owner"]
    assert list(tmp_path.iterdir()) == []


def test_a_fresh_folder_is_left_for_its_owner_to_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between creating the folder and locking it, a new owner holds no lock yet: a folder
    younger than the grace period is never pruned, whether its owner is alive or not."""
    with owner(tmp_path) as (proc, folder):
        proc.kill()
        proc.wait()
    assert prune_abandoned(tmp_path, "deploy-") == []
    assert folder.is_dir()
    monkeypatch.setattr(scratch, "GRACE_SECONDS", 0.0)
    assert prune_abandoned(tmp_path, "deploy-") == [folder]
    assert list(tmp_path.iterdir()) == []


def test_other_names_are_not_touched(tmp_path: Path) -> None:
    (tmp_path / "pkgs").mkdir()
    other = tmp_path / "build-1"
    other.mkdir()
    age(other)
    assert prune_abandoned(tmp_path, "deploy-") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build-1", "pkgs"]


def test_this_process_never_prunes_its_own_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POSIX locks do not conflict within one process, so another thread's prune here would
    get the lock of a folder this process still uses."""
    monkeypatch.setattr(scratch, "GRACE_SECONDS", 0.0)
    with scratch_folder(tmp_path, "deploy-") as first:
        with scratch_folder(tmp_path, "deploy-") as second:
            assert first.is_dir() and second.is_dir()
        assert first.is_dir()


class _Stop(BaseException):
    """What the CLI's SIGTERM handler raises (interrupts.Terminated), for this test only."""


@pytest.mark.parametrize("moment", ["after mkdtemp", "after the lock file", "during removal"])
def test_a_signal_at_any_moment_still_removes_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moment: str
) -> None:
    """SIGTERM right after the folder (or its lock file) appears, before the code that removes
    it is armed, or while it is being removed: nothing stays behind."""
    import os
    import signal

    def stop(signum: int, frame: object) -> None:
        raise _Stop()

    def signal_after(real):  # type: ignore[no-untyped-def]
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            result = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)  # delivered at once unless held back
            return result

        return wrapped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        if moment == "after mkdtemp":
            monkeypatch.setattr(scratch.tempfile, "mkdtemp", signal_after(scratch.tempfile.mkdtemp))
        elif moment == "after the lock file":
            monkeypatch.setattr(scratch, "_open_lock", signal_after(scratch._open_lock))
        with pytest.raises(_Stop):
            with scratch_folder(tmp_path, "work-") as folder:
                (folder / "data").write_text("x")
                if moment == "during removal":
                    monkeypatch.setattr(
                        scratch.shutil, "rmtree", signal_after(scratch.shutil.rmtree)
                    )
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert list(tmp_path.iterdir()) == []
