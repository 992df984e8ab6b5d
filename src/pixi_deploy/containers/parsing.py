"""Small structural parsers for Dockerfiles and Apptainer definition files.

Enough of both grammars to check what pixi-deploy writes (and to read a user's file back):
Dockerfile instructions with line continuations, stages split at ``FROM ... AS``, ``COPY`` flags,
exec-form (JSON) ``ENTRYPOINT``/``CMD``, ``ENV``/``LABEL``/``ARG`` key=value pairs; Apptainer
header blocks (``Bootstrap``/``From``/``Stage``) with their ``%sections``.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from pixi_deploy.errors import ContainerError


@dataclass
class Instruction:
    keyword: str
    """Upper-case instruction name (FROM, COPY, RUN, ...)."""
    value: str
    """Arguments with continuations joined (as one line, without the trailing backslashes)."""
    flags: dict[str, str] = field(default_factory=dict)
    """``--from=build --chmod=0755`` -> {"from": "build", "chmod": "0755"}."""
    args: list[str] = field(default_factory=list)
    """Arguments after the flags: shell words, or the JSON array in exec form."""
    exec_form: bool = False


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def first(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[0] if found else None

    def pairs(self, keyword: str) -> dict[str, str]:
        """Merged key=value pairs of every ENV / LABEL / ARG instruction of the stage."""
        result: dict[str, str] = {}
        for instruction in self.all(keyword):
            result.update(_pairs(instruction.value))
        return result


@dataclass
class Dockerfile:
    directives: dict[str, str]
    preamble: list[Instruction]
    """Instructions before the first FROM (global ARGs)."""
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)


_FLAG_RE = re.compile(r"^--([a-z-]+)(?:=(.*))?$")
_DIRECTIVE_RE = re.compile(r"^#\s*([a-zA-Z]+)\s*=\s*(.+?)\s*$")


def parse_dockerfile(text: str) -> Dockerfile:
    """Parse into stages; raises :class:`ContainerError` on text that is not a Dockerfile."""
    directives: dict[str, str] = {}
    logical: list[str] = []
    pending = ""
    in_header = True
    for raw in text.splitlines():
        line = raw.strip()
        if in_header:
            match = _DIRECTIVE_RE.match(line)
            if match and not pending:
                directives[match.group(1).lower()] = match.group(2)
                continue
            in_header = False
        if line.startswith("#") or (not line and not pending):
            continue  # comments (also between continuation lines) and blank lines
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        logical.append(pending + line)
        pending = ""
    if pending:
        raise ContainerError("Dockerfile ends inside a line continuation", "remove the last '\\'")
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        instruction = _instruction(keyword.upper(), rest.strip())
        if instruction.keyword == "FROM":
            words = instruction.args
            if not words:
                raise ContainerError("FROM without an image", "write FROM <image> [AS <name>]")
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    return Dockerfile(directives=directives, preamble=preamble, stages=stages)


def _instruction(keyword: str, rest: str) -> Instruction:
    flags: dict[str, str] = {}
    body = rest
    if keyword in ("COPY", "ADD", "FROM", "RUN"):
        while body.startswith("--"):
            word, _, remainder = body.partition(" ")
            match = _FLAG_RE.match(word)
            if not match:
                break
            flags[match.group(1)] = match.group(2) or ""
            body = remainder.strip()
    if body.startswith("[") and keyword in ("ENTRYPOINT", "CMD", "RUN", "COPY", "SHELL"):
        try:
            args = json.loads(body)
        except json.JSONDecodeError as error:
            raise ContainerError(
                f"{keyword} has an invalid JSON array: {error.msg}", "use double quotes"
            ) from None
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ContainerError(f"{keyword} exec form must be a list of strings")
        return Instruction(keyword, rest, flags, args, exec_form=True)
    try:
        args = shlex.split(body, posix=True) if keyword != "RUN" else [body]
    except ValueError:
        args = body.split()
    return Instruction(keyword, rest, flags, args)


def _pairs(value: str) -> dict[str, str]:
    result: dict[str, str] = {}
    words = shlex.split(value, posix=True)
    if len(words) >= 2 and "=" not in words[0]:  # legacy `ENV KEY value`
        return {words[0]: " ".join(words[1:])}
    for word in words:
        key, _, item = word.partition("=")
        result[key] = item
    return result


# -- Apptainer --------------------------------------------------------------------------------
@dataclass
class DefinitionStage:
    header: dict[str, str]
    sections: dict[str, list[str]]
    """Section name (``files``, ``files from build``, ``post``, ...) -> its lines, dedented."""

    @property
    def name(self) -> str | None:
        return self.header.get("Stage")

    def files(self, section: str = "files") -> list[tuple[str, str]]:
        pairs = []
        for line in self.sections.get(section, []):
            words = line.split()
            if words and not words[0].startswith("#"):
                pairs.append((words[0], words[1] if len(words) > 1 else words[0]))
        return pairs

    def labels(self) -> dict[str, str]:
        result = {}
        for line in self.sections.get("labels", []):
            key, _, value = line.partition(" ")
            if key:
                result[key] = value.strip()
        return result


_SECTION_RE = re.compile(r"^%([a-z]+(?: from \S+)?)\s*$")
_HEADER_RE = re.compile(r"^([A-Za-z]+):\s*(.*)$")


def parse_apptainer_def(text: str) -> list[DefinitionStage]:
    """Split a (multi-stage) definition file into stages: header keywords + ``%sections``."""
    stages: list[DefinitionStage] = []
    current: DefinitionStage | None = None
    section: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        header = _HEADER_RE.match(line)
        if header and not raw.startswith((" ", "\t")):
            key, value = header.group(1), header.group(2).strip()
            if key == "Bootstrap" or current is None:
                current = DefinitionStage(header={}, sections={})
                stages.append(current)
                section = None
            current.header[key] = value
            continue
        match = _SECTION_RE.match(stripped) if not raw.startswith((" ", "\t")) else None
        if match:
            if current is None:
                raise ContainerError("a %section before any Bootstrap header", "add Bootstrap:")
            section = match.group(1)
            if section in current.sections:
                raise ContainerError(f"section %{section} appears twice in one stage")
            current.sections[section] = []
            continue
        if section is None or current is None:
            if stripped and not stripped.startswith("#"):
                raise ContainerError(f"unexpected line outside a section: {stripped[:40]}")
            continue
        if stripped:
            current.sections[section].append(stripped)
    return stages


def as_dict(stages: list[DefinitionStage]) -> list[dict[str, Any]]:
    return [{"header": s.header, "sections": s.sections} for s in stages]
