"""A small, real project: a python environment the cluster's user can run (Debian's python
wrapped as a conda package), a training script, a package of modules, data, a .gitignore and
git history, and whatever manifest tables a test adds (activation, tasks, [tool.pixi-deploy])."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pixi_deploy.testing.python_pkg import make_python_workspace

#: the cluster's user cannot enter /root (this interpreter's pyenv): jobs wrap Debian's python
SYSTEM_PYTHON = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"

TRAIN = """\
import argparse, os, sys
sys.path.insert(0, "src")
from model import describe
parser = argparse.ArgumentParser()
parser.add_argument("--lr", default="0.1")
parser.add_argument("--epochs", default="1")
args = parser.parse_args()
print(f"train: {describe()} lr={args.lr} epochs={args.epochs} mode={os.environ.get('MODE', '-')}")
print("cwd " + os.getcwd())
print("root " + os.environ.get("PIXI_PROJECT_ROOT", "unset"))
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as out:
    out.write("done\\n")
"""

MODEL = 'VERSION = "v1"\n\n\ndef describe():\n    return "model " + VERSION\n'


#: manifest activation (scripts, env, a target's env) and tasks (depends-on, args, env) that
#: the cluster tests of the project use; SETUP is its activation script scripts/setup.sh
ACTIVATION = """
[activation]
scripts = ["scripts/setup.sh"]
env = { DATA_DIR = "$PIXI_PROJECT_ROOT/data", FROM_SCRIPT = "$SETUP_RAN" }

[target.linux-64.activation.env]
ON_LINUX = "yes"

[tasks]
prepare = "mkdir -p outputs && echo prepared >> outputs/log && echo PREPARE in $(pwd)"
train = { cmd = "python train.py --epochs {{ epochs }} --lr {{ lr }}", args = ["epochs", { arg = "lr", default = "0.01" }], depends-on = ["prepare"], env = { MODE = "fast" } }
show = "echo root=$PIXI_PROJECT_ROOT data=$DATA_DIR script=$FROM_SCRIPT linux=$ON_LINUX env=$PIXI_ENVIRONMENT_NAME default=$CONDA_DEFAULT_ENV; cat outputs/log 2>/dev/null || true"
"""
SETUP = 'export SETUP_RAN="setup.sh from $PIXI_PROJECT_ROOT"\n'


def make_project(dest: Path, manifest_extra: str = "", *, git: bool = True) -> Path:
    """The project's folder (``dest/workspace``); its channel is ``dest/channel``."""
    workspace = make_python_workspace(dest, path_dependencies={}, interpreter=SYSTEM_PYTHON)
    manifest = workspace / "pixi.toml"
    manifest.write_text(manifest.read_text() + manifest_extra)
    (workspace / "train.py").write_text(TRAIN)
    (workspace / "src").mkdir()
    (workspace / "src" / "model.py").write_text(MODEL)
    (workspace / "data").mkdir()
    (workspace / "data" / "config.json").write_text('{"layers": 3}\n')
    (workspace / ".gitignore").write_text("outputs/\n*.log\n")
    (workspace / "debug.log").write_text("ignored by git\n")
    (workspace / ".pixi").mkdir(exist_ok=True)
    (workspace / ".pixi" / "config.toml").write_text("# never shipped\n")
    if git:
        run_git(workspace, "init", "-q")
        run_git(workspace, "add", "-A")
        run_git(workspace, "commit", "-q", "-m", "first")
    (workspace / "notes.txt").write_text("untracked, not ignored: shipped\n")
    return workspace


def run_git(folder: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
