"""pixi tasks without pixi: `run --task` (here) and `submit --task` (tests/code) run the
manifest's tasks as `pixi run` does: cmd string or list, args with defaults and {{ arg }},
env, cwd, depends-on (in order, once each), feature and target tasks, aliases; and refuse
what only pixi can do, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.project import make_project
from pixi_deploy.cli import main
from pixi_deploy.tasks import deno_only_syntax, environment_tasks, parse_task, pixi_quote, plan_task

TASKS = """
[tasks]
prepare = { cmd = "mkdir -p outputs && echo prepared >> outputs/log && echo PREPARE in $(pwd)" }
train = { cmd = "python train.py --lr {{ lr }} --epochs {{ epochs }}", args = ["epochs", { arg = "lr", default = "0.01" }], depends-on = ["prepare"], env = { MODE = "fast", PATH = "/opt/extra:$PATH" } }
both = ["prepare", { task = "train", args = ["3", "0.5"] }, { task = "train", args = [{ epochs = "9" }] }]
listed = { cmd = ["echo", "two words", "$MODE", "[x]"], env = { MODE = "from-task" } }
inside = { cmd = "pwd", cwd = "src" }
free = "echo free:"
fail = "echo failing; exit 3"
after-fail = { cmd = "echo never", depends-on = ["fail"] }
loop-a = { cmd = "true", depends-on = ["loop-b"] }
loop-b = { cmd = "true", depends-on = ["loop-a"] }
cached = { cmd = "true", inputs = ["src/*.py"], outputs = ["outputs/x"] }
clean = { cmd = "true", clean-env = true }
deno = "python train.py &> outputs/all.log"
elsewhere = { depends-on = [{ task = "prepare", environment = "other" }] }
overridden = "echo generic"

[target.linux-64.tasks]
overridden = "echo linux-64"

[feature.gpu.tasks]
gpu-only = "echo gpu"
overridden = "echo from-gpu"

[environments]
gpu = ["gpu"]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workspace = make_project(tmp_path_factory.mktemp("tasks"), TASKS, git=False)
    _add_gpu_environment(workspace)
    return workspace


def _add_gpu_environment(workspace: Path) -> None:
    """The lock gets a 'gpu' environment: the default one's packages (its feature adds tasks)."""
    import rattler

    lock = rattler.LockFile.from_path(workspace / "pixi.lock")
    default = lock.environment("default")
    assert default is not None
    new = rattler.LockFile([rattler.LockPlatform(p.name) for p in lock.platforms()])
    platforms = {p.name: p for p in new.platforms()}
    for env_name in ("default", "gpu"):
        new.set_channels(env_name, [rattler.LockChannel(str(c)) for c in default.channels()])
        for platform in default.platforms():
            for record in default.conda_repodata_records_for_platform(platform) or []:
                new.add_conda_package(env_name, platforms[platform.name], record)
    new.to_path(workspace / "pixi.lock")


@pytest.fixture
def run(project: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """`pixi-deploy run ARGS` in-process; the task's output comes from a real process, so it is
    read from the file descriptors: (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()
        code = main(
            ["run", "--manifest-path", str(project), "-p", "linux-64", "--base",
             str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache"), *args]
        )  # fmt: skip
        out, err = capfd.readouterr()
        return code, out, err

    return invoke


def test_depends_on_args_defaults_and_env(project: Path, run) -> None:
    (project / "outputs").mkdir(exist_ok=True)
    (project / "outputs" / "log").write_text("")
    code, out, err = run("--task", "train", "--", "5", "0.2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"PREPARE in {project}"  # the dependency first, in the project root
    assert lines[1] == "train: model v1 lr=0.2 epochs=5 mode=fast"
    assert f"root {project}" in lines  # PIXI_PROJECT_ROOT is the workspace, as with pixi run
    assert "pixi-deploy task (prepare in default)" in err
    assert "pixi-deploy task (train in default): python train.py --lr 0.2 --epochs 5" in err

    code, out, err = run("--task", "train", "--", "7")  # lr's default
    assert code == 0 and "train: model v1 lr=0.01 epochs=7 mode=fast" in out


def test_alias_runs_each_task_once_with_its_arguments(project: Path, run) -> None:
    (project / "outputs").mkdir(exist_ok=True)
    (project / "outputs" / "log").write_text("")
    code, out, err = run("--task", "both")
    assert code == 0, err
    assert (project / "outputs" / "log").read_text() == "prepared\n"  # once, though asked 3x
    trains = [line for line in out.splitlines() if line.startswith("train:")]
    assert trains == [
        "train: model v1 lr=0.5 epochs=3 mode=fast",
        "train: model v1 lr=0.01 epochs=9 mode=fast",  # named argument, the other's default
    ]


def test_env_values_are_defaults_as_in_pixi(run, monkeypatch) -> None:
    monkeypatch.setenv("MODE", "from-the-caller")
    code, out, _ = run("--task", "listed")
    assert code == 0
    # the caller's MODE wins over the task's default; list items are quoted as pixi quotes them
    assert out.splitlines() == ["two words from-the-caller [x]"]


def test_cwd_free_words_and_targets(project: Path, run) -> None:
    assert run("--task", "inside")[:2] == (0, f"{project / 'src'}\n")
    assert run("--task", "free", "--", "a b", "c")[:2] == (0, "free: a b c\n")
    assert run("--task", "overridden")[:2] == (0, "linux-64\n")  # [target.linux-64.tasks]
    assert run("--task", "gpu-only")[:2] == (0, "gpu\n")  # only the gpu environment has it
    assert run("-e", "gpu", "--task", "overridden")[:2] == (0, "from-gpu\n")  # feature first


def test_a_failing_dependency_fails_the_task(run) -> None:
    code, out, err = run("--task", "after-fail")
    assert code == 3
    assert "failing" in out and "never" not in out
    assert "pixi-deploy: task fail failed with exit code 3" in err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--task", "nope"], "has no task 'nope'"),
        (["--task", "loop-a"], "cycle: loop-a -> loop-b -> loop-a"),
        (["--task", "cached"], "inputs/outputs"),
        (["--task", "clean"], "clean-env"),
        (["--task", "deno"], "'&>'"),
        (["--task", "elsewhere"], "environment 'other'"),
        (["--task", "train"], "needs its argument 'epochs'"),
        (["--task", "train", "--", "1", "2", "3"], "takes 2 argument(s)"),
    ],
)
def test_refusals_are_one_line(run, args: list[str], needle: str) -> None:
    code, out, err = run(*args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err
    assert out == ""


def test_inspect_lists_each_environments_tasks(project: Path, cli) -> None:
    described = json.loads(cli("inspect", "--manifest-path", project, "--json").stdout)
    tasks = described["environments"]["default"]["platforms"]["linux-64"]["tasks"]
    assert tasks["train"]["args"] == [
        {"name": "epochs", "default": None},
        {"name": "lr", "default": "0.01"},
    ]
    assert tasks["train"]["depends_on"] == ["prepare"] and tasks["train"]["runnable"] is True
    assert tasks["both"]["alias"] is True
    assert tasks["cached"]["runnable"] is False and "inputs/outputs" in tasks["cached"]["why"]
    assert tasks["overridden"]["cmd"] == "echo linux-64"
    assert "gpu-only" not in tasks
    gpu = described["environments"]["gpu"]["platforms"]["linux-64"]["tasks"]
    assert gpu["gpu-only"]["cmd"] == "echo gpu" and gpu["overridden"]["cmd"] == "echo from-gpu"


def test_plan_and_script_details() -> None:
    tasks = {
        "a": parse_task("a", {"cmd": "echo {{ x }}", "args": ["x"]}),
        "b": parse_task(
            "b", {"depends-on": [{"task": "a", "args": ["one"]}, {"task": "a", "args": ["one"]}]}
        ),
        "c": parse_task("c", "echo {{ x }}"),  # no args: the template is left as it is
    }
    plan = plan_task(tasks, "b", [], "default")
    assert [(s.name, s.command) for s in plan.steps] == [("a", "echo one")]
    assert plan_task(tasks, "c", [], "default").steps[0].command == "echo {{ x }}"
    assert pixi_quote("") == '""' and pixi_quote('say "hi" now') == '"say \\"hi\\" now"'
    assert deno_only_syntax("echo '|&' \"&>\" a\\&\\>b") is None  # quoted: not syntax
    assert deno_only_syntax("ls src/**/*.py") is not None
    assert deno_only_syntax("make |& tee log") is not None
    assert environment_tasks({"tasks": {"t": "x"}}, "default", "linux-64")["t"].cmd == "x"
