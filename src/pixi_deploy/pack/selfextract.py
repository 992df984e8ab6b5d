"""A self-extracting pack: one shell script that installs the environment with no python, no
pixi and nothing downloaded.

The environment is laid out *here*, for a long fixed placeholder prefix (:data:`PLACEHOLDER`),
exactly as a deploy would lay it out for a real path. Then every file that names the placeholder
is listed: text files (rewritten with ``sed`` at install time) and, in binary files, each C string
that contains it (offset, length, number of occurrences: rewritten in place with ``dd``, padded
with NULs to its old length, as conda does). The tree goes into a tar appended to
``selfextract.sh``; the script checks its own header and the payload's length and ``cksum``
(and sha256 when ``sha256sum`` exists) before it writes anything, unpacks into a staging folder
beside the target, relocates, and renames into place. Before any of that it runs the same shell
check a job runs on its compute node (`pixi_deploy.target.shell_check`: glibc, CUDA driver,
``CONDA_OVERRIDE_GLIBC`` / ``CONDA_OVERRIDE_CUDA``), and after relocating it makes the conda-meta
records true for the target (`pack.selfextract_meta`), as py-rattler's install would write them.

The header's checksum (on its last line) catches a damaged or carelessly edited script, not a
deliberate one: whoever edits the script can edit its checksum too. What proves an installer is
the one that was built is its digest, the sha256 of the whole file, printed at pack time
(`SelfExtractResult.digest`): compare it with ``sha256sum installer.sh`` before running it.

Tools the script needs on the target: ``sh``, ``tar``, ``dd``, ``cksum``, ``sed``, ``mkdir``,
``mv``, ``rm``, ``chmod``, ``ln``, ``cat`` (POSIX; ``sha256sum`` optional).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pixi_deploy import __version__
from pixi_deploy.errors import PackError, store_error_from_os
from pixi_deploy.pack.fetch import DownloadCache
from pixi_deploy.pack.layout import lay_out_environment
from pixi_deploy.pack.placeholders import find_placeholder
from pixi_deploy.pack.selfextract_meta import tokenise_records
from pixi_deploy.progress import NullReporter, Reporter
from pixi_deploy.scratch import scratch_folder
from pixi_deploy.target import shell_check
from pixi_deploy.workspace import ResolvedEnvironment, file_name_part

#: Longest target path the script accepts. Must not exceed any package's binary placeholder
#: (conda-build's is 255 characters), since rattler patches those with this one first.
PLACEHOLDER_LENGTH = 200
PLACEHOLDER = ("/pixi_deploy_self_extract" + "_placeholder" * 20)[:PLACEHOLDER_LENGTH]
RELOCATE_NAME = ".pixi-deploy-relocate"
BLOCK = 4096
FIXED_MTIME = 315532800
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
#: Starts the header's last line, which holds the cksum and sha256 of the lines above it.
HEADER_MARK = "#pixi-deploy-header"
_LAST_LINE = len(HEADER_MARK) + 80  # mark, cksum, sha256, spaces, at least one "#" and "\n"


@dataclass(frozen=True)
class SelfExtractResult:
    path: Path
    size: int
    payload_size: int
    text_files: int
    binary_strings: int
    digest: str = ""  # sha256:<hex> of the whole installer (what `sha256sum` prints)


def default_self_extract_name(resolved: ResolvedEnvironment) -> str:
    """One file name in the current folder, whatever the workspace is called."""
    stem = f"{resolved.workspace.name}-{resolved.name}-{resolved.platform}-{resolved.short_hash}"
    return file_name_part(stem) + ".sh"


def write_self_extracting(
    resolved: ResolvedEnvironment,
    output: Path | None = None,
    *,
    cache: DownloadCache | None = None,
    reporter: Reporter | None = None,
) -> SelfExtractResult:
    """Write the self-extracting installer for ``resolved``; it appears only when complete."""
    reporter = reporter or NullReporter()
    cache = cache or DownloadCache()
    output = Path(output or default_self_extract_name(resolved)).absolute()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        # armed before it exists, and removed by the next run if this one is killed
        with scratch_folder(output.parent, f".{output.name}.work-") as work:
            return _write(resolved, output, work, cache, reporter)
    except OSError as error:
        raise store_error_from_os(error, output.parent) from error


def _write(
    resolved: ResolvedEnvironment,
    output: Path,
    work: Path,
    cache: DownloadCache,
    reporter: Reporter,
) -> SelfExtractResult:
    try:
        prefix = work / "prefix"
        lay_out_environment(
            resolved, cache, staging=prefix, final=Path(PLACEHOLDER), reporter=reporter
        )
        texts, strings = write_relocation_list(prefix)
        payload = work / "payload.tar"
        reporter.step(f"writing {output.name}")
        _write_tar(prefix, payload)
        header = _header(resolved, output.name, payload)
        partial = work / "out.sh"
        whole = hashlib.sha256(header)
        with partial.open("wb") as out:
            out.write(header)
            with payload.open("rb") as source:
                while chunk := source.read(1 << 20):
                    whole.update(chunk)
                    out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(partial, 0o755 & ~_umask())
        os.replace(partial, output)
        payload_size = payload.stat().st_size
    except OSError as error:
        raise PackError(
            f"cannot write {output}: {error.strerror or error}", "free space or pick another -o"
        ) from error
    return SelfExtractResult(
        output, output.stat().st_size, payload_size, texts, strings, "sha256:" + whole.hexdigest()
    )


def write_relocation_list(prefix: Path) -> tuple[int, int]:
    """List what names the placeholder, in the format the script reads; (text files, C strings).

    ``T path`` a text file; ``B offset length count path`` a C string in a binary file;
    ``L path`` + next line the link target, for symbolic links; then the ``F`` / ``J`` lines
    that make the conda-meta records true for the target (`pack.selfextract_meta`).
    """
    needle = PLACEHOLDER.encode()
    lines: list[str] = []
    inodes: dict[tuple[int, int], tuple[int, int, int] | None] = {}
    relocated: dict[str, tuple[int, int, int]] = {}
    texts = strings = 0
    for path in sorted(_walk(prefix)):
        rel = path.relative_to(prefix).as_posix()
        if "\n" in rel:
            raise PackError(
                f"cannot make a self-extracting pack: a file name has a newline ({rel!r})"
            )
        if path.is_symlink():
            link = os.readlink(path)
            if PLACEHOLDER in link:
                lines += [f"L {rel}", link]
            continue
        stat = path.stat()
        inode = (stat.st_dev, stat.st_ino)
        if inode in inodes:  # a hard link: relocating the first name relocates them all
            if (known := inodes[inode]) is not None:
                relocated[rel] = known
            continue
        inodes[inode] = None
        found = find_placeholder(path, needle)  # in chunks: a 2 GB library is not read whole
        if found is None:
            continue
        if not found.binary:
            lines.append(f"T {rel}")
            texts += 1
            occurrences = sum(count for _, _, count in found.strings)
            inodes[inode] = relocated[rel] = (len(relocated), stat.st_size, occurrences)
            continue
        inodes[inode] = relocated[rel] = (len(relocated), stat.st_size, 0)
        for position, length, count in found.strings:
            lines.append(f"B {position} {length} {count} {rel}")
            strings += 1
    lines += tokenise_records(prefix, relocated)
    (prefix / RELOCATE_NAME).write_text("".join(line + "\n" for line in lines))
    return texts, strings


def _walk(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                found.append(base / name)
        found += [base / name for name in filenames]
    return found


def _write_tar(prefix: Path, payload: Path) -> None:
    """A plain tar of the prefix, reproducible: sorted, owner 0, fixed mtimes."""

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = FIXED_MTIME
        return info

    with tarfile.open(payload, "w", format=tarfile.GNU_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(prefix):
            dirnames.sort()
            base = Path(dirpath)
            entries += [base / n for n in dirnames] + [base / n for n in sorted(filenames)]
        for entry in sorted(entries, key=lambda p: p.relative_to(prefix).as_posix()):
            tar.add(entry, entry.relative_to(prefix).as_posix(), recursive=False, filter=clean)


def _header(resolved: ResolvedEnvironment, script_name: str, payload: Path) -> bytes:
    size = payload.stat().st_size
    crc = _cksum(payload)
    with payload.open("rb") as source:
        sha = hashlib.file_digest(source, "sha256").hexdigest()
    template = resources.files("pixi_deploy.pack").joinpath("selfextract.sh").read_text()
    values = {
        "TOOL_VERSION": __version__,
        "ENVIRONMENT": _safe(resolved.name),
        "PLATFORM": _safe(resolved.platform),
        "LOCK_HASH": resolved.lock_hash,
        "SCRIPT_NAME": _safe(script_name),
        "PAYLOAD_SIZE": str(size),
        "PAYLOAD_CKSUM": str(crc),
        "PAYLOAD_SHA256": sha,
        "PLACEHOLDER": PLACEHOLDER,
        "TARGET_CHECK": shell_check(
            resolved.virtual_packages,
            resolved.name,
            hint="nothing was installed; CONDA_OVERRIDE_GLIBC / CONDA_OVERRIDE_CUDA override the "
            "detection",
        ),
        "PLACEHOLDER_LENGTH": str(len(PLACEHOLDER)),
        "DEFAULT_NAME": file_name_part(
            f"{resolved.workspace.name}-{resolved.name}-{resolved.short_hash}"
        ),
    }
    for key, value in values.items():
        template = template.replace(f"@@{key}@@", value)
    # PAYLOAD_BLOCKS depends on the header's own length: fill it in with a fixed width
    template = template.replace("@@PAYLOAD_BLOCKS@@", "0" * 9 + "@@")
    body = template.encode()
    blocks = -(-(len(body) + _LAST_LINE) // BLOCK)
    body = body.replace(("0" * 9 + "@@").encode(), f"{blocks:011d}".encode())
    # the last line: the checksums of everything above it (the script checks them first)
    last = f"{HEADER_MARK} {posix_cksum(body)} {hashlib.sha256(body).hexdigest()} ".encode()
    filler = blocks * BLOCK - len(body) - len(last) - 1
    return body + last + b"#" * filler + b"\n"


def _cksum(path: Path) -> int:
    """POSIX ``cksum`` of a file (the system tool when present: it is much faster)."""
    if shutil.which("cksum"):
        run = subprocess.run(["cksum", str(path)], capture_output=True, text=True, check=False)
        if run.returncode == 0:
            return int(run.stdout.split()[0])
    return posix_cksum(path.read_bytes())


def posix_cksum(data: bytes) -> int:
    """The CRC that POSIX ``cksum`` prints (polynomial 0x04C11DB7, length appended)."""
    table = []
    for i in range(256):
        c = i << 24
        for _ in range(8):
            c = ((c << 1) ^ 0x04C11DB7) if c & 0x80000000 else (c << 1)
        table.append(c & 0xFFFFFFFF)
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    length = len(data)
    while length:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ (length & 0xFF)]
        length >>= 8
    return (~crc) & 0xFFFFFFFF


def _safe(text: str) -> str:
    return _SAFE.sub("_", text)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
