"""Which files of a workspace a code snapshot holds, and the limits that keep it sane.

By default what git would commit: the files git tracks plus untracked files it does not ignore
(`git ls-files --cached --others --exclude-standard`). Outside a git checkout, every file except
what a ``.gitignore`` (at any level) excludes. ``.pixi/`` and ``.git/`` never go. The
workspace's ``[tool.pixi-deploy]`` table adjusts it with gitignore-style patterns::

    [tool.pixi-deploy]
    include = ["data/small/*.csv"]   # shipped even when git ignores them
    exclude = ["notebooks/", "*.ckpt", "!keep.ckpt"]   # never shipped (`!` re-includes)
    max-file-size = "100MB"          # bigger files are refused, by name
    max-files = 20000                # more files than this are refused

Files over the size limit, or more files than the count limit, are refused with a message that
names them and says to exclude them: they are never shipped, or dropped, silently.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pathspec

from pixi_deploy.errors import ConfigError, WorkspaceError

NEVER = (".pixi", ".git")
DEFAULT_MAX_FILE_SIZE = 100 * 1000 * 1000
DEFAULT_MAX_FILES = 20_000
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class CodeRules:
    """``[tool.pixi-deploy]`` include/exclude patterns and limits."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
    max_files: int = DEFAULT_MAX_FILES

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> CodeRules:
        return cls(
            include=_patterns(config, "include"),
            exclude=_patterns(config, "exclude"),
            max_file_size=parse_size(config.get("max-file-size", DEFAULT_MAX_FILE_SIZE)),
            max_files=_count(config.get("max-files", DEFAULT_MAX_FILES)),
        )


def _patterns(config: dict[str, Any], key: str) -> tuple[str, ...]:
    value = config.get(key, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"[tool.pixi-deploy] {key} must be a list of glob patterns",
            f'e.g. {key} = ["data/*.csv"]',
        )
    return tuple(value)


def parse_size(value: object) -> int:
    """``100MB``, ``1.5GiB``, ``5000`` (bytes) -> bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value)) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(
            f"[tool.pixi-deploy] max-file-size {value!r} is not a size",
            'write it like "100MB", "2GB" or a number of bytes',
        )
    unit = (match[2] or "").lower().removesuffix("b")  # "", "k", "mi", ...
    power = " kmgt".index(unit[0]) if unit else 0
    return int(float(match[1]) * (1024 if unit.endswith("i") else 1000) ** power)


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ConfigError(
        f"[tool.pixi-deploy] max-files {value!r} is not a positive number", "e.g. max-files = 50000"
    )


def select_files(root: Path, rules: CodeRules) -> list[str]:
    """The snapshot's paths (relative, POSIX, sorted): regular files and symbolic links."""
    chosen = set(_git_files(root) if _is_git(root) else _walk_unignored(root))
    if rules.include:
        spec = pathspec.GitIgnoreSpec.from_lines(rules.include)
        chosen.update(p for p in _walk(root) if spec.match_file(p))
    if rules.exclude:
        spec = pathspec.GitIgnoreSpec.from_lines(rules.exclude)
        chosen = {p for p in chosen if not spec.match_file(p)}
    paths = sorted(p for p in chosen if not _never(p) and _is_shippable(root / p))
    check_limits(root, paths, rules)
    return paths


def check_limits(root: Path, paths: Sequence[str], rules: CodeRules) -> None:
    if len(paths) > rules.max_files:
        folders = Counter(p.split("/", 1)[0] + ("/" if "/" in p else "") for p in paths)
        most = ", ".join(f"{name} ({n} files)" for name, n in folders.most_common(3))
        raise WorkspaceError(
            f"the code snapshot would hold {len(paths)} files, more than max-files "
            f"({rules.max_files}); the most are in {most}",
            "add what the job does not need to [tool.pixi-deploy] exclude "
            "(or raise max-files, or pass --no-code)",
        )
    too_big = []
    for path in paths:
        info = os.lstat(root / path)
        if stat.S_ISREG(info.st_mode) and info.st_size > rules.max_file_size:
            too_big.append((info.st_size, path))
    if too_big:
        too_big.sort(reverse=True)
        shown = ", ".join(f"{p} ({size / 1e6:.1f} MB)" for size, p in too_big[:5])
        more = f" and {len(too_big) - 5} more" if len(too_big) > 5 else ""
        raise WorkspaceError(
            f"{len(too_big)} file(s) are over the code snapshot's max-file-size "
            f"({rules.max_file_size / 1e6:.0f} MB): {shown}{more}",
            "add them to [tool.pixi-deploy] exclude (or raise max-file-size); big data "
            "belongs on the cluster's filesystem, not in the snapshot",
        )


def _is_git(root: Path) -> bool:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0 and done.stdout.strip() == "true"


def _git_files(root: Path, prefix: str = "") -> Iterator[str]:
    """Tracked and untracked-but-not-ignored files under ``root``; submodules recursed into."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=120,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise WorkspaceError(
            f"git could not list the files of {root} ({error})",
            "check the checkout with `git status`, or pass --no-code",
        ) from error
    for raw in dict.fromkeys(out.split(b"\0")):
        if not raw:
            continue
        path = os.fsdecode(raw)
        full = root / path
        if full.is_dir() and not full.is_symlink():  # a submodule
            yield from _git_files(full, f"{prefix}{path}/")
        else:
            yield prefix + path


def _walk(root: Path) -> Iterator[str]:
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        dirs[:] = sorted(d for d in dirs if d not in NEVER)
        for name in files:
            yield rel + name
        for name in dirs:  # symbolic links to folders are files of the snapshot, not followed
            if (Path(folder) / name).is_symlink():
                yield rel + name


def _walk_unignored(root: Path) -> Iterator[str]:
    """Everything except what a .gitignore excludes (a deeper .gitignore decides first)."""
    specs: list[tuple[str, pathspec.GitIgnoreSpec]] = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root).as_posix()
        rel = "" if rel == "." else rel + "/"
        specs = [(base, s) for base, s in specs if rel.startswith(base)]
        ignore = Path(folder) / ".gitignore"
        if ignore.is_file():
            try:
                lines = ignore.read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            specs.append((rel, pathspec.GitIgnoreSpec.from_lines(lines)))
        kept = []
        for name in sorted(dirs):
            if name in NEVER:
                continue
            if (Path(folder) / name).is_symlink():
                if not _ignored(specs, rel + name):
                    yield rel + name
                continue
            if not _ignored(specs, rel + name + "/"):
                kept.append(name)
        dirs[:] = kept
        for name in files:
            if not _ignored(specs, rel + name):
                yield rel + name


def _ignored(specs: list[tuple[str, pathspec.GitIgnoreSpec]], path: str) -> bool:
    for base, spec in reversed(specs):
        result = spec.check_file(path[len(base) :])
        if result.include is not None:
            return bool(result.include)
    return False


def _never(path: str) -> bool:
    return any(part in NEVER for part in path.split("/"))


def _is_shippable(path: Path) -> bool:
    """Regular files and symbolic links; a path git lists but that is gone (deleted in the
    working tree, not committed) is a deletion, not part of the snapshot."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISLNK(mode)
