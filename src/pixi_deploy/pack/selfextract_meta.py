"""The self-extracting installer's conda-meta records, made true for the path it installs at.

py-rattler records, for every file whose prefix placeholder it replaced, the file's size and
sha256 *after* the replacement (``size_in_bytes``, ``sha256_in_prefix`` in ``paths_data``). The
installer's environment is laid out for a placeholder path and relocated by a shell script, so
those two values are only known on the target. Here, at pack time, each such value in the staged
``conda-meta/*.json`` becomes a token (a JSON string, so the records stay valid JSON) and the
relocation list gains what the script needs to fill them in:

``F <n> <size> <occurrences> <path>``
    file ``n``'s size at the placeholder and how many placeholders a text relocation shortens
    (0 for a binary file: its C strings are padded to their old length), so its new size is
    ``size - occurrences * (len(placeholder) - len(target))``, computed without any tool; its
    sha256 is taken after relocation (``sha256sum`` or ``shasum -a 256``).
``J <path>``
    a record that holds tokens, rewritten once every ``F`` line is known.

Hard links share one ``n``: relocating one name relocates them all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

SIZE_MARK = "@pdsx-size-{n}@"
SHA_MARK = "@pdsx-sha-{n}@"


def tokenise_records(prefix: Path, relocated: Mapping[str, tuple[int, int, int]]) -> list[str]:
    """Put tokens into the records of ``prefix`` for every relocated file and return the ``F`` and
    ``J`` lines. ``relocated`` maps a file's prefix-relative path to (n, size, occurrences)."""
    files: list[str] = []
    records: list[str] = []
    used: set[int] = set()
    meta = prefix / "conda-meta"
    for record in sorted(meta.glob("*.json")) if meta.is_dir() else []:
        data = json.loads(record.read_text())
        paths = data.get("paths_data", {}).get("paths", [])
        changed = False
        for entry in paths:
            found = relocated.get(entry.get("_path", ""))
            if found is None or entry.get("path_type") == "softlink":
                continue
            n = found[0]
            entry["size_in_bytes"] = SIZE_MARK.format(n=n)
            entry["sha256_in_prefix"] = SHA_MARK.format(n=n)
            used.add(n)
            changed = True
        if changed:
            record.write_text(json.dumps(data))
            records.append(f"J {record.relative_to(prefix).as_posix()}")
    for rel, (n, size, occurrences) in sorted(relocated.items(), key=lambda item: item[1][0]):
        if n in used:
            files.append(f"F {n} {size} {occurrences} {rel}")
            used.discard(n)  # one line per inode, whichever name comes first
    return files + records
