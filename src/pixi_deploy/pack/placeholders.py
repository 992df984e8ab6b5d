"""Where a file names a placeholder, found by reading it in chunks (issue 18): a 2 GB shared
library costs one chunk of memory, not its size.

What is found is what the self-extracting installer relocates (`pack.selfextract`): a file with
no NUL byte is a text file (every occurrence replaced); in any other file, each NUL-terminated
string that holds the placeholder is rewritten in place and padded, so the result names each
such string by its offset, its length up to the NUL (or the end of the file) and how many
placeholders it holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 1 << 22


@dataclass
class Found:
    binary: bool = False  # the file has a NUL byte
    strings: list[tuple[int, int, int]] = field(default_factory=list)  # offset, length, count


def find_placeholder(path: Path, needle: bytes, chunk: int = CHUNK) -> Found | None:
    """None when ``path`` does not hold ``needle`` (which holds no NUL byte)."""
    assert needle and b"\0" not in needle
    keep = len(needle) - 1
    found = Found()
    opened: list[int] | None = None  # [offset, count] of a string not closed by a NUL yet
    buf, base, pos = b"", 0, 0  # buf[0] is at offset ``base`` of the file
    with path.open("rb") as source:
        while True:
            data = source.read(chunk)
            found.binary = found.binary or b"\0" in data
            buf += data
            final = not data
            limit = len(buf) if final else max(pos, len(buf) - keep)  # needles wholly seen
            while True:
                if opened is None:
                    at = buf.find(needle, pos)
                    if at == -1:
                        pos = limit
                        break
                    opened, pos = [base + at, 1], at + len(needle)
                    continue
                end = buf.find(b"\0", pos)
                stop = len(buf) if end == -1 else end
                while (at := buf.find(needle, pos, stop)) != -1:
                    opened[1] += 1
                    pos = at + len(needle)
                if end == -1:
                    pos = max(pos, limit)
                    break
                found.strings.append((opened[0], base + end - opened[0], opened[1]))
                opened, pos = None, end
            if final:
                if opened is not None:
                    found.strings.append((opened[0], base + len(buf) - opened[0], opened[1]))
                return found if found.strings else None
            buf, base, pos = buf[pos:], base + pos, 0
