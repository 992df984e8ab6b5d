"""pixi tasks without pixi: the manifest's tasks, resolved and written out as one POSIX sh script.

What pixi does, and so what this does (pixi's manifest and task docs, and its ``task.rs``):

* an environment's tasks come from its features (default feature last) and, per feature, from
  ``[target.<selector>.tasks]`` over ``[tasks]``; an earlier feature and a more specific target
  win (:mod:`pixi_deploy.manifest`);
* ``cmd`` is a string, or a list whose items are quoted the way pixi quotes them and joined;
* ``args`` (a name, or ``{ arg, default }``) are given positionally after the task name and
  replace ``{{ name }}``; templates render only for a task that declares ``args``; a task without
  ``args`` gets the extra words appended to its command instead;
* ``depends-on`` (names, or ``{ task, args }``) run first, depth first in the order listed, each
  (task, arguments) once; a failing one stops the run with its exit status; a task with only
  ``depends-on`` (or the ``name = ["a", "b"]`` shorthand) is an alias;
* ``env`` values are defaults: one the job already has is kept unless the value refers to
  itself (``PATH = "/x:$PATH"``) or the manifest's ``[activation] env`` set it; ``cwd`` is
  relative to the project root, where tasks run by default.

Refused, with one line that says why: ``inputs``/``outputs`` (pixi's task cache needs pixi),
``clean-env`` (pixi's minimal environment),
a dependency in another environment, MiniJinja beyond ``{{ name }}``, and deno_task_shell syntax
that a POSIX shell reads differently (``|&``, ``&>``, ``**`` globs).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pixi_deploy.errors import WorkspaceError
from pixi_deploy.manifest import environment_features, target_tables

_ARG = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class TaskError(WorkspaceError):
    """A task that does not exist, cannot be planned, or needs what only pixi can do."""


@dataclass(frozen=True)
class TaskArg:
    name: str
    default: str | None = None


@dataclass(frozen=True)
class Dependency:
    task: str
    positional: tuple[str, ...] = ()
    named: tuple[tuple[str, str], ...] = ()
    environment: str | None = None


@dataclass(frozen=True)
class Task:
    name: str
    cmd: str | tuple[str, ...] | None  # None: an alias
    args: tuple[TaskArg, ...] | None = None  # None: no ``args`` declared (free-form words)
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    depends_on: tuple[Dependency, ...] = ()
    description: str | None = None
    caches: bool = False  # has inputs/outputs
    default_environment: str | None = None
    clean_env: bool = False

    def describe(self) -> dict[str, Any]:
        """For ``inspect --json``."""
        why = unsupported_reason(self)
        return {
            "cmd": list(self.cmd) if isinstance(self.cmd, tuple) else self.cmd,
            "alias": self.cmd is None,
            "args": None
            if self.args is None
            else [{"name": a.name, "default": a.default} for a in self.args],
            "depends_on": [d.task for d in self.depends_on],
            "env": dict(self.env),
            "cwd": self.cwd,
            "description": self.description,
            "default_environment": self.default_environment,
            "runnable": why is None,
            **({"why": why} if why else {}),
        }


@dataclass(frozen=True)
class PlannedTask:
    name: str
    command: str  # shell text, as pixi would hand it to its shell
    env: tuple[tuple[str, str], ...] = ()
    cwd: str = ""  # relative to the project root


@dataclass(frozen=True)
class TaskPlan:
    """What ``--task NAME`` runs, in order: dependencies first, each once."""

    task: str
    environment: str
    steps: tuple[PlannedTask, ...]
    activation_keys: frozenset[str] = field(default_factory=frozenset)

    def script(self) -> str:
        """One POSIX sh script: each task in its own ``sh -c`` in a subshell (variables and
        ``cd`` do not leak into the next), stopping at the first failure with its status."""
        q = shlex.quote
        lines = ['__pd_root="${PIXI_PROJECT_ROOT:-$PWD}"']
        for step in self.steps:
            shown = f"pixi-deploy task ({step.name} in {self.environment}): {step.command}"
            where = f'"$__pd_root"/{q(step.cwd)}' if step.cwd else '"$__pd_root"'
            exports = [self._export(key, value) for key, value in step.env]
            body = " && ".join([f"cd {where}", *exports, f"exec sh -c {q(step.command)}"])
            lines += [
                f"printf '%s\\n' {q(shown)} >&2",
                f"( {body} ) || {{ __pd_status=$?; printf 'pixi-deploy: task %s failed with "
                f'exit code %s\\n\' {q(step.name)} "$__pd_status" >&2; exit "$__pd_status"; }}',
            ]
        return "\n".join(lines) + "\n"

    def command(self) -> list[str]:
        return ["sh", "-c", self.script(), "pixi-deploy-task"]

    def _export(self, key: str, value: str) -> str:
        export = f'export "{key}={value}"'  # as pixi writes it: the value expands
        if f"${key}" in value or "${" + key + "}" in value or key in self.activation_keys:
            return export
        return f'{{ [ -n "${{{key}+x}}" ] || {export}; }}'


def environment_tasks(pixi: dict[str, Any], environment: str, platform: str) -> dict[str, Task]:
    """Every task of ``environment`` on ``platform``, as pixi resolves them."""
    found: dict[str, Task] = {}
    for feature_name, feature in environment_features(pixi, environment):
        for table in target_tables(feature, platform):
            tasks = table.get("tasks") or {}
            if not isinstance(tasks, dict):
                raise TaskError(f"[tasks] of feature '{feature_name}' is not a table")
            for name, value in tasks.items():
                found.setdefault(str(name), parse_task(str(name), value))
    return found


def parse_task(name: str, value: Any) -> Task:
    if isinstance(value, str):
        return Task(name, value)
    if isinstance(value, list):
        return Task(name, None, depends_on=_dependencies(name, value))
    if not isinstance(value, dict):
        raise TaskError(f"task '{name}' is neither a command, a list nor a table")
    cmd = value.get("cmd")
    if isinstance(cmd, list):
        cmd = tuple(str(c) for c in cmd)
    elif cmd is not None and not isinstance(cmd, str):
        raise TaskError(f"the cmd of task '{name}' is neither a string nor a list")
    depends = value.get("depends-on", value.get("depends_on", []))
    env = value.get("env") or {}
    if not isinstance(env, dict):
        raise TaskError(f"the env of task '{name}' is not a table")
    args = value.get("args")
    cwd = value.get("cwd")
    return Task(
        name,
        cmd,
        args=None if args is None else _args(name, args),
        env=tuple((_env_name(name, str(k)), str(v)) for k, v in env.items()),
        cwd=None if cwd is None else str(cwd),
        depends_on=_dependencies(name, depends if isinstance(depends, list) else [depends]),
        description=value.get("description"),
        caches=bool(value.get("inputs") or value.get("outputs")),
        default_environment=value.get("default-environment"),
        clean_env=bool(value.get("clean-env", False)),
    )


def _args(task: str, raw: Any) -> tuple[TaskArg, ...]:
    if not isinstance(raw, list):
        raise TaskError(f"the args of task '{task}' are not a list")
    out = []
    for item in raw:
        if isinstance(item, str):
            arg = TaskArg(item)
        elif isinstance(item, dict) and isinstance(item.get("arg"), str):
            default = item.get("default")
            arg = TaskArg(item["arg"], None if default is None else str(default))
        else:
            raise TaskError(f"an argument of task '{task}' is neither a name nor {{ arg = ... }}")
        if not _NAME.match(arg.name):
            raise TaskError(
                f"argument '{arg.name}' of task '{task}' is not a valid name",
                "use letters, digits and _ (pixi does not allow '-')",
            )
        out.append(arg)
    return tuple(out)


def _dependencies(task: str, raw: list[Any]) -> tuple[Dependency, ...]:
    out = []
    for item in raw:
        if isinstance(item, str):
            out.append(Dependency(item))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise TaskError(f"a depends-on entry of task '{task}' names no task")
        positional: list[str] = []
        named: list[tuple[str, str]] = []
        for arg in item.get("args") or []:
            if isinstance(arg, dict) and len(arg) == 1:
                ((key, value),) = arg.items()
                named.append((str(key), str(value)))
            else:
                positional.append(str(arg))
        env = item.get("environment")
        out.append(Dependency(item["task"], tuple(positional), tuple(named), env))
    return tuple(out)


def _env_name(task: str, name: str) -> str:
    if not _NAME.match(name):
        raise TaskError(f"{name!r} in the env of task '{task}' is not a valid variable name")
    return name


def unsupported_reason(task: Task) -> str | None:
    """Why pixi-deploy cannot run ``task`` as pixi would, or None."""
    if task.caches:
        return (
            "it has inputs/outputs, and skipping it when they are unchanged needs pixi's task "
            "cache; remove them to run it every time, or run it with pixi"
        )
    if task.clean_env:
        return (
            "it asks for clean-env, pixi's own minimal environment; drop clean-env to run it "
            "in the job's activated environment"
        )
    commands = [task.cmd] if isinstance(task.cmd, str) else list(task.cmd or ())
    for command in commands:
        if "{%" in command or "{#" in command or re.search(r"\{\{[^}]*\|", command):
            return (
                "its command uses MiniJinja beyond {{ name }} (blocks or filters), which "
                "pixi-deploy does not render"
            )
        syntax = deno_only_syntax(command)
        if syntax:
            return (
                f"its command uses {syntax}, which deno_task_shell (pixi's shell) and a POSIX "
                "shell read differently; write it the POSIX way"
            )
    return None


def deno_only_syntax(command: str) -> str | None:
    """deno_task_shell syntax that ``sh`` would silently read as something else."""
    quote = ""
    i = 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif command.startswith("|&", i):
            return "'|&' (a pipe of stdout and stderr)"
        elif command.startswith("&>", i):
            return "'&>' (stdout and stderr to a file; sh would run the command in the background)"
        elif command.startswith("**", i):
            return "a '**' glob (recursive in deno_task_shell, one level in sh)"
        i += 1
    return None


def plan_task(
    tasks: dict[str, Task],
    name: str,
    words: Sequence[str],
    environment: str,
    activation_keys: frozenset[str] = frozenset(),
) -> TaskPlan:
    """The steps ``--task name words...`` runs, dependencies first, each (task, args) once."""
    steps: list[PlannedTask] = []
    done: set[tuple[str, tuple[str, ...]]] = set()

    def visit(
        task_name: str, positional: Sequence[str], named: dict[str, str], chain: list[str]
    ) -> None:
        if task_name in chain:
            cycle = " -> ".join([*chain[chain.index(task_name) :], task_name])
            raise TaskError(
                f"the tasks depend on each other in a cycle: {cycle}",
                "remove one of these depends-on entries",
            )
        task = tasks.get(task_name)
        if task is None:
            known = ", ".join(sorted(t for t in tasks if not t.startswith("_"))) or "none"
            needed = f" (needed by '{chain[-1]}')" if chain else ""
            raise TaskError(
                f"environment '{environment}' has no task '{task_name}'{needed}; its tasks: {known}",
                "check the name, or pick the environment with -e",
            )
        why = unsupported_reason(task)
        if why:
            raise TaskError(f"pixi-deploy cannot run task '{task_name}': {why}")
        values, extra = _bind(task, positional, named)
        key = (task_name, tuple(values.values()) if values is not None else tuple(extra))
        if key in done:
            return
        for dep in task.depends_on:
            if dep.environment not in (None, environment):
                raise TaskError(
                    f"task '{task_name}' runs '{dep.task}' in environment '{dep.environment}', "
                    f"but a job runs in one environment ('{environment}')",
                    "submit that task on its own with -e " + dep.environment,
                )
            dep_positional = [_render(a, values, task_name) for a in dep.positional]
            dep_named = {k: _render(v, values, task_name) for k, v in dep.named}
            visit(dep.task, dep_positional, dep_named, [*chain, task_name])
        done.add(key)
        if task.cmd is not None:
            steps.append(
                PlannedTask(
                    task_name,
                    _command(task, values, extra),
                    task.env,
                    _cwd(task),
                )
            )

    visit(name, list(words), {}, [])
    return TaskPlan(name, environment, tuple(steps), activation_keys)


def _bind(
    task: Task, positional: Sequence[str], named: dict[str, str]
) -> tuple[dict[str, str] | None, list[str]]:
    """(typed argument values, or None) and the free-form words for a task without args."""
    if task.args is None:
        if named:
            raise TaskError(f"task '{task.name}' declares no args, so it takes none by name")
        return None, list(positional)
    declared = [a.name for a in task.args]
    if len(positional) > len(declared):
        raise TaskError(
            f"task '{task.name}' takes {len(declared)} argument(s) "
            f"({', '.join(declared) or 'none'}), but got {len(positional)}",
            "drop the extra words",
        )
    unknown = [k for k in named if k not in declared]
    if unknown:
        raise TaskError(f"task '{task.name}' has no argument '{unknown[0]}'")
    values: dict[str, str] = {}
    for i, arg in enumerate(task.args):
        if i < len(positional):
            values[arg.name] = positional[i]
        elif arg.name in named:
            values[arg.name] = named[arg.name]
        elif arg.default is not None:
            values[arg.name] = arg.default
        else:
            raise TaskError(
                f"task '{task.name}' needs its argument '{arg.name}'",
                f"give it after the task name: --task {task.name} -- VALUE ...",
            )
    return values, []


def _render(template: str, values: dict[str, str] | None, task: str) -> str:
    if values is None:
        return template  # pixi renders only for tasks that declare args

    def substitute(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise TaskError(
                f"task '{task}' uses {{{{ {match[1]} }}}}, which is not one of its args"
            )
        return values[match[1]]

    return _ARG.sub(substitute, template)


def _command(task: Task, values: dict[str, str] | None, extra: list[str]) -> str:
    if isinstance(task.cmd, tuple):
        text = " ".join(pixi_quote(_render(part, values, task.name)) for part in task.cmd)
    else:
        text = _render(task.cmd or "", values, task.name)
    if extra:
        text += " " + " ".join(pixi_quote(word) for word in extra)
    return text


def _cwd(task: Task) -> str:
    if not task.cwd:
        return ""
    parts = [p for p in task.cwd.replace("\\", "/").split("/") if p not in ("", ".")]
    if task.cwd.startswith("/") or ".." in parts:
        raise TaskError(
            f"the cwd of task '{task.name}' ({task.cwd}) is outside the project",
            "give a folder of the workspace, relative to its root",
        )
    return "/".join(parts)


def pixi_quote(word: str) -> str:
    """How pixi quotes a list item of ``cmd`` (task.rs ``quote``): double quotes around words
    with blanks or brackets, so ``$VAR`` still expands, as in pixi's shell."""
    if not word:
        return '""'
    if any(c in word for c in "\t\r\n []"):
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word
