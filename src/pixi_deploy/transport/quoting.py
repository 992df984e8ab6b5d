"""The one place where argument vectors become remote shell command lines.

sshd hands a command *string* to the user's login shell, so every argument must be quoted.
Doing it only here (``shlex.quote`` per argument) means paths with spaces, quotes or
``$(...)`` reach the remote program literally and nothing else in the code base builds
command strings by hand. The login shell must be POSIX-like (sh, bash, dash, zsh, ksh).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence

Arg = str | os.PathLike[str]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Runs "$@" in the background and kills it when stdin reaches EOF (channel closed or the
# caller cancelled), so a cancelled `tail -F` does not linger on the login node. Background
# jobs of a non-interactive sh get /dev/null as stdin, hence the explicit fd 3.
_WATCHDOG = """\
exec 3<&0
"$@" </dev/null 3<&- &
child=$!
{ cat <&3 >/dev/null; kill "$child" 2>/dev/null; } >/dev/null 2>&1 &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""


def quote(arg: Arg) -> str:
    """Quote one argument for a POSIX shell; NUL bytes cannot be passed and are refused."""
    text = os.fspath(arg)
    if "\0" in text:
        raise ValueError("a remote command argument contains a NUL byte")
    return shlex.quote(text)


def _check_argv(argv: Sequence[Arg]) -> None:
    if isinstance(argv, str | bytes):
        raise TypeError("argv must be a sequence of arguments, not one string")
    if not argv:
        raise ValueError("argv is empty")


def join(argv: Sequence[Arg]) -> str:
    """Quote and join an argument vector into one shell command line."""
    _check_argv(argv)
    return " ".join(quote(a) for a in argv)


def sh_c(script: str, args: Sequence[Arg] = (), name: str = "sh") -> list[str]:
    """Argv that runs a POSIX sh ``script`` with ``args`` as ``$1 $2 ...``.

    The arguments never become part of the script text, so they are never re-parsed.
    """
    return ["sh", "-c", script, name, *(os.fspath(a) for a in args)]


def command_line(
    argv: Sequence[Arg],
    *,
    cwd: Arg | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The full remote command: optional ``cd`` and variables, then ``exec`` of argv.

    Variables are passed as shell assignments because sshd accepts SSH ``env`` requests
    only for names listed in the server's AcceptEnv (usually just LANG/LC_*).
    """
    _check_argv(argv)
    parts: list[str] = []
    if cwd is not None:
        parts.append(f"cd -- {quote(cwd)} &&")
    for key, value in (env or {}).items():
        if not _ENV_NAME.match(key):
            raise ValueError(f"{key!r} is not a valid environment variable name")
        parts.append(f"export {key}={quote(value)} &&")
    if parts:
        parts.append("exec")
    parts.append(join(argv))
    return " ".join(parts)


def with_watchdog(argv: Sequence[Arg]) -> list[str]:
    """Wrap argv so that closing stdin (cancel, lost connection) kills the remote program."""
    _check_argv(argv)
    return sh_c(_WATCHDOG, argv, name="pixi-deploy-stream")


def after_login(command: str, post_login_command: str | None) -> str:
    """Wrap a remote command in the site's post-login command (dagster-slurm's semantics):
    ``{cmd}`` in the template is replaced by ``sh -c '<command>'``; without it the command
    runs after the template succeeded (``TEMPLATE && command``)."""
    if not post_login_command:
        return command
    if "{cmd}" in post_login_command:
        return post_login_command.replace("{cmd}", f"sh -c {quote(command)}")
    return f"{post_login_command} && {command}"
