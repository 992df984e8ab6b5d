"""Which files a code snapshot holds, its hash, its limits, and a workspace that changes while
it is taken (all local: no cluster)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers.project import make_project, run_git
from pixi_deploy.code.select import CodeRules, parse_size, select_files
from pixi_deploy.code.snapshot import take_snapshot
from pixi_deploy.errors import ConfigError, WorkspaceError


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("snap"))


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "workspace"
    shutil.copytree(template, copy, symlinks=True)
    return copy


def test_git_checkout_ships_tracked_and_untracked_not_ignored(project: Path) -> None:
    (project / "src" / "link.py").symlink_to("model.py")
    (project / "model.ckpt").write_bytes(b"\0" * 10)
    (project / "big").mkdir()
    (project / "big" / "ignored-by-git.bin").write_bytes(b"x")
    (project / ".gitignore").write_text("outputs/\n*.log\nbig/\n")
    (project / "tracked-then-deleted.txt").write_text("x")
    run_git(project, "add", "tracked-then-deleted.txt")
    (project / "tracked-then-deleted.txt").unlink()
    assert select_files(project, CodeRules()) == [
        ".gitignore",
        "data/config.json",
        "model.ckpt",
        "notes.txt",
        "pixi.lock",
        "pixi.toml",
        "src/link.py",
        "src/model.py",
        "train.py",
    ]  # fmt: skip  (no .pixi/, .git/, debug.log, big/; the deletion is a deletion)
    rules = CodeRules(
        include=("big/*.bin", "debug.log"), exclude=("*.ckpt", "data/", "!data/config.json")
    )
    chosen = select_files(project, rules)
    assert "big/ignored-by-git.bin" in chosen and "debug.log" in chosen
    assert "model.ckpt" not in chosen and "data/config.json" in chosen


def test_outside_git_gitignore_files_decide(project: Path) -> None:
    shutil.rmtree(project / ".git")
    (project / "src" / ".gitignore").write_text("*.tmp\n!keep.tmp\n")
    (project / "src" / "x.tmp").write_text("x")
    (project / "src" / "keep.tmp").write_text("k")
    (project / "outputs").mkdir()
    (project / "outputs" / "result.txt").write_text("r")
    chosen = select_files(project, CodeRules())
    assert "src/keep.tmp" in chosen and "src/x.tmp" not in chosen
    assert "debug.log" not in chosen and "outputs/result.txt" not in chosen
    assert not any(p.startswith(".pixi/") for p in chosen) and "notes.txt" in chosen


def test_hash_follows_content_names_and_modes(project: Path, tmp_path: Path) -> None:
    first = take_snapshot(project, CodeRules(), tmp_path / "cache")
    again = take_snapshot(project, CodeRules(), tmp_path / "cache")
    assert first.digest == again.digest and len(first.hash) == 16
    elsewhere = tmp_path / "moved"
    shutil.copytree(project, elsewhere, symlinks=True)
    assert take_snapshot(elsewhere, CodeRules()).digest == first.digest  # no paths, no times
    os.chmod(project / "train.py", 0o755)
    executable = take_snapshot(project, CodeRules(), tmp_path / "cache")
    assert executable.digest != first.digest
    assert executable.by_path()["train.py"].key == first.by_path()["train.py"].key + "x"
    # same size, same mtime, new bytes: the stat cache must not hide the change
    model = project / "src" / "model.py"
    info = model.stat()
    model.write_text(model.read_text().replace("v1", "v9"))
    os.utime(model, ns=(info.st_atime_ns, info.st_mtime_ns))
    edited = take_snapshot(project, CodeRules(), tmp_path / "cache")
    assert edited.by_path()["src/model.py"].key != executable.by_path()["src/model.py"].key


def test_limits_name_the_files_and_exclude(project: Path, cli, monkeypatch) -> None:
    (project / "weights.bin").write_bytes(b"w" * 5000)
    (project / "data" / "huge.csv").write_bytes(b"c" * 3000)
    with pytest.raises(WorkspaceError) as too_big:
        select_files(project, CodeRules(max_file_size=2000))
    text = str(too_big.value)
    assert "weights.bin (0.0 MB)" in text and "data/huge.csv" in text and "exclude" in text
    assert "train.py" not in text
    with pytest.raises(WorkspaceError) as too_many:
        select_files(project, CodeRules(max_files=3))
    assert "more than max-files (3)" in str(too_many.value) and "exclude" in str(too_many.value)
    # through the CLI: one line, exit 2, before anything goes anywhere (no cluster settings)
    manifest = project / "pixi.toml"
    manifest.write_text(manifest.read_text() + '\n[tool.pixi-deploy]\nmax-file-size = "2kB"\n')
    for name in ("SLURM_EDGE_NODE_HOST", "SLURM_DEPLOYMENT_BASE_PATH"):
        monkeypatch.delenv(name, raising=False)
    out = cli("submit", "--manifest-path", project, "--", "python", "train.py")
    assert out.exit_code == 2
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "weights.bin" in errors[0] and "exclude" in errors[0]
    assert parse_size("1.5GiB") == 1610612736 and parse_size(7) == 7
    with pytest.raises(ConfigError):
        CodeRules.from_config({"max-file-size": "lots"})


def test_a_file_that_disappears_or_changes_while_hashed_is_an_error(project: Path) -> None:
    def delete_the_next(path: str) -> None:
        if path == "notes.txt":
            (project / "pixi.lock").unlink()  # hashed after notes.txt (sorted order)

    with pytest.raises(WorkspaceError, match="pixi.lock disappeared while the code snapshot"):
        take_snapshot(project, CodeRules(), on_file=delete_the_next)

    def edit_an_earlier_one(path: str) -> None:
        if path == "train.py":  # notes.txt was hashed already
            (project / "notes.txt").write_text("edited meanwhile, and longer than before\n")

    with pytest.raises(WorkspaceError, match="notes.txt changed while the code snapshot"):
        take_snapshot(project, CodeRules(), on_file=edit_an_earlier_one)
