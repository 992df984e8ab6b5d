"""Read a pack, checking everything in it before it is used: the chain from one digest down to
every byte that gets installed.

1. The metadata (the first member) is hashed as it is read: that sha256 is the pack's digest,
   which ``pack`` and ``pack-info`` print and ``unpack --expect-digest`` compares. Its fields are
   type-checked (`pack.format`).
2. The embedded lock must match the metadata's ``lock_sha256``, hold the metadata's environment
   and platform, and list exactly the conda archives the metadata lists, with the same sha256.
3. Every archive must match its sha256 (checked as it streams out of a compressed pack, or right
   where it is used for an uncompressed one).
4. Members come in the order the writer wrote them, each a plain regular file, and nothing
   follows the last one but the tar's own zero padding: appended or inserted bytes are refused.

Nothing is taken on trust before its check: sizes read into memory are bounded first.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, cast

import rattler
import zstandard

from pixi_deploy.errors import PackError, store_error_from_os
from pixi_deploy.pack.archives import Archive, ArchiveSlice
from pixi_deploy.pack.confined import ConfinedFolder
from pixi_deploy.pack.format import (
    LOCK_MEMBER,
    MAX_LOCK_BYTES,
    MAX_METADATA_BYTES,
    METADATA_NAME,
    ZSTD_MAGIC,
    PackedFile,
    PackMetadata,
    digest_of,
    normalize_digest,
)
from pixi_deploy.progress import Reporter
from pixi_deploy.tarwriter import archive_length, member_length

CHUNK = 1 << 20
REDO = "re-create or re-download the pack"


def label_of(pack: Path | str) -> str:
    """How messages name a pack: a file by its name, a stream as it was given."""
    return pack.name if isinstance(pack, Path) else pack


def read_pack_header(pack: Path) -> tuple[PackMetadata, str]:
    """Only the metadata (the first member) and the pack's digest: cheap, for `pack-info`."""
    try:
        with open_pack(pack) as (tar, _, _):
            metadata, digest, _ = first_metadata(tar, pack)
            return metadata, digest
    except (tarfile.ReadError, EOFError, zstandard.ZstdError) as error:
        raise broken(pack, error, None, None) from error


def check_digest(digest: str, expected: str | None, pack: Path | str) -> None:
    if expected is not None and digest != normalize_digest(expected):
        raise PackError(
            f"{pack} has the digest {digest}, not the expected {normalize_digest(expected)}",
            "this is not the pack that was pinned (altered, or another one): nothing was "
            "installed; get the pack again from where it was built",
        )


def extract_verified(
    pack: Path,
    into: Path,
    reporter: Reporter,
    *,
    in_place: bool = False,
    expect_digest: str | None = None,
) -> tuple[PackMetadata, Path, dict[str, Archive]]:
    """Stream the pack's members into ``into``, checking each against the metadata.

    With ``in_place``, an uncompressed pack's conda archives are not copied at all: they are
    hashed, and later read, where they are (`ArchiveSlice`)."""
    into.mkdir(parents=True, exist_ok=True)
    files: dict[str, Archive] = {}
    checks: list[tuple[str, Future[str]]] = []
    hasher = ThreadPoolExecutor(2)  # hash archive n while archive n+1 is copied
    counted: Counted | None = None
    metadata: PackMetadata | None = None
    try:
        with open_pack(pack) as (tar, seekable, counted), ConfinedFolder(into) as tree:
            metadata, digest, metadata_size = first_metadata(tar, pack)
            check_digest(digest, expect_digest, pack)
            lock_path = read_lock(tar, metadata, tree, into, pack)
            with reporter.task("verify", metadata.payload_bytes) as advance:
                for entry in metadata.files:
                    member = next_member(tar, entry.path, entry.size, pack)
                    if in_place and seekable and entry.kind == "conda":  # checked when used
                        files[member.name] = _slice_of(pack, member, entry)
                    else:
                        job = _copy_member_async(tar, member, tree, entry.size, hasher, seekable)
                        checks.append((member.name, job))
                        files[member.name] = into / member.name
                    advance(entry.size)
            extra = tar.next()
            if extra is not None:
                raise PackError(f"unexpected member '{extra.name[:80]}' in {pack}", REDO)
            sizes = (metadata_size, lock_path.stat().st_size)
            check_end(tar, counted, seekable, metadata, sizes, pack)
            for name, check in checks:
                if check.result() != _entry(metadata, name).sha256:
                    raise PackError(
                        f"{name} in {label_of(pack)} is corrupt (sha256 mismatch)", REDO
                    )
    except (tarfile.ReadError, EOFError, zstandard.ZstdError) as error:
        raise broken(pack, error, counted, metadata) from error
    except OSError as error:
        raise store_error_from_os(error, into) from error
    finally:
        hasher.shutdown(wait=True, cancel_futures=True)
    return metadata, lock_path, files


def records_from_lock(lock_path: Path, metadata: PackMetadata) -> list[rattler.RepoDataRecord]:
    """The lock's records for the metadata's environment and platform, which must be exactly
    the conda archives the metadata lists (a pack whose platform was changed, or whose lock
    lists other packages, is refused)."""
    try:
        lock = rattler.LockFile.from_path(lock_path)
        env = lock.environment(metadata.environment)
        if env is None:
            raise PackError("the pack's lock lacks its own environment", REDO)
        platform = next((p for p in env.platforms() if str(p) == metadata.platform), None)
        records = list(env.conda_repodata_records_for_platform(platform) or []) if platform else []
    except PackError:
        raise
    except Exception as error:  # rattler's own parse errors (ParseCondaLockError, ...)
        first = " ".join(str(error).split())[:200]
        raise PackError(f"the pack's embedded lock cannot be read ({first})", REDO) from None
    locked = {r.file_name: (r.sha256.hex() if r.sha256 else None) for r in records}
    listed = {Path(f.path).name: f.sha256 for f in metadata.files if f.kind == "conda"}
    if locked != listed:
        odd = sorted(set(locked.items()) ^ set(listed.items()), key=str)[0][0]
        raise PackError(
            f"the pack's lock and metadata disagree about {odd} ({metadata.platform}): the pack "
            "was altered",
            REDO,
        )
    return records


def first_metadata(tar: tarfile.TarFile, pack: Path | str) -> tuple[PackMetadata, str, int]:
    """The metadata, the pack's digest, and the metadata member's size."""
    member = tar.next()
    if member is None or member.name != METADATA_NAME or not member.isfile():
        raise PackError(
            f"{pack} is not a pixi-deploy pack", "pass a file written by `pixi-deploy pack`"
        )
    if member.size > MAX_METADATA_BYTES:
        raise PackError(f"the metadata of {pack} is larger than {MAX_METADATA_BYTES} bytes", REDO)
    source = tar.extractfile(member)
    assert source is not None
    data = source.read(member.size)
    if len(data) != member.size:
        raise EOFError("the metadata ends early")
    return PackMetadata.from_json(data), digest_of(data), len(data)


def read_lock(
    tar: tarfile.TarFile, metadata: PackMetadata, tree: ConfinedFolder, into: Path, pack: Path | str
) -> Path:
    member = tar.next()
    if member is None or member.name != LOCK_MEMBER or not member.isfile():
        raise PackError(f"{pack} has no {LOCK_MEMBER} after its metadata", REDO)
    if member.size > MAX_LOCK_BYTES:
        raise PackError(f"the lock in {pack} is larger than {MAX_LOCK_BYTES} bytes", REDO)
    fd = tree.create_file("pixi.lock", 0o644)
    with os.fdopen(fd, "wb") as out:
        digest = copy_member(tar, member, out)
    if digest != metadata.lock_sha256:
        raise PackError(f"the lock in {label_of(pack)} does not match its metadata: altered", REDO)
    return into / "pixi.lock"


def next_member(tar: tarfile.TarFile, name: str, size: int, pack: Path | str) -> tarfile.TarInfo:
    member = tar.next()
    if member is None:
        raise EOFError(f"{name} is missing")
    if member.name != name or not member.isfile():
        raise PackError(f"unexpected member '{member.name[:80]}' in {pack} (expected {name})", REDO)
    if member.size != size:
        raise PackError(f"{name} has {member.size} bytes, metadata says {size}", REDO)
    return member


def _entry(metadata: PackMetadata, path: str) -> PackedFile:
    entry = metadata.file(path)
    assert entry is not None
    return entry


def expected_length(metadata: PackMetadata, sizes: tuple[int, int]) -> int:
    """The bytes `pack.write` writes for this metadata (``sizes``: of the metadata member and
    of the lock): the tar, before any compression."""
    members = member_length(METADATA_NAME, sizes[0])
    members += member_length(LOCK_MEMBER, sizes[1])
    members += sum(member_length(f.path, f.size) for f in metadata.files)
    return archive_length(members)


def check_end(
    tar: tarfile.TarFile,
    counted: Counted | None,
    seekable: bool,
    metadata: PackMetadata,
    sizes: tuple[int, int],
    pack: Path | str,
) -> None:
    """After the last member, only the tar's zero padding, to exactly the length the writer
    writes: junk appended to a pack (or to its zstd stream) is refused."""
    want = expected_length(metadata, sizes)
    if seekable:
        source: Any = tar.fileobj
        end = os.fstat(source.fileno()).st_size
        last = tar.offset
        source.seek(last)
        tail = source.read(end - last) if end - last <= 1 << 20 else b"\1"
    else:
        assert counted is not None
        tail = counted.drain(1 << 20)
        end = counted.count
    if end != want or tail.count(0) != len(tail):
        raise PackError(
            f"{pack} has {abs(end - want)} bytes {'more' if end > want else 'fewer'} than its "
            "metadata describes, or data after its last member: it was altered or damaged",
            REDO,
        )


def broken(
    pack: Path | str, error: Exception, counted: Counted | None, metadata: PackMetadata | None
) -> PackError:
    """Say "truncated" when the stream ended early (zstd gives no error of its own then)."""
    if counted is not None and metadata is not None:
        want = expected_length(metadata, (0, 0))
        if counted.count < want:
            return PackError(f"{pack} is truncated (it ends early)", REDO)
    if counted is not None and metadata is None and not isinstance(error, zstandard.ZstdError):
        return PackError(f"{pack} is truncated or not a pack (its zstd stream ends early)", REDO)
    if isinstance(error, EOFError) and "missing" in str(error):
        return PackError(f"{pack} is truncated: {error}", REDO)
    return PackError(f"{pack} is truncated or corrupt ({error})", REDO)


def _copy_member_async(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    tree: ConfinedFolder,
    size: int,
    hasher: ThreadPoolExecutor,
    seekable: bool,
) -> Future[str]:
    """Copy one archive out of the pack (through `pack.confined`); its sha256 is computed by
    ``hasher`` meanwhile.

    From an uncompressed pack the bytes are copied by the kernel (``copy_file_range``, a reflink
    on filesystems that have them); from a compressed one they stream through Python and are
    hashed on the way."""
    fd = tree.create_file(member.name, 0o644)
    with os.fdopen(fd, "wb") as out:
        source: Any = tar.fileobj
        if seekable and source is not None:
            _copy_range(source.fileno(), out.fileno(), member.offset_data, size, member.name)
            return hasher.submit(_sha256_of, Path(tree.root) / member.name)
        done: Future[str] = Future()
        done.set_result(copy_member(tar, member, out))
        return done


def _copy_range(src: int, dst: int, offset: int, size: int, name: str) -> None:
    copied = 0
    use_copy_file_range = True
    while copied < size:
        try:
            if use_copy_file_range:
                n = os.copy_file_range(src, dst, size - copied, offset + copied)
            else:
                n = os.sendfile(dst, src, offset + copied, size - copied)
        except OSError as error:
            if use_copy_file_range and error.errno in (
                errno.EXDEV,
                errno.ENOSYS,
                errno.EOPNOTSUPP,
                errno.EINVAL,
            ):
                use_copy_file_range = False  # another filesystem (or an old kernel)
                continue
            raise
        if n == 0:
            raise EOFError(f"{name} ends early")
        copied += n


def _slice_of(pack: Path, member: tarfile.TarInfo, entry: PackedFile) -> ArchiveSlice:
    name = Path(member.name).name
    return ArchiveSlice(pack, member.offset_data, entry.size, name, entry.sha256)


def _sha256_of(path: Path) -> str:
    with path.open("rb") as source:
        return hashlib.file_digest(source, "sha256").hexdigest()


def copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, out: BinaryIO) -> str:
    source = tar.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    remaining = member.size
    while remaining:
        chunk = source.read(min(CHUNK, remaining))
        if not chunk:
            raise EOFError(f"{member.name} ends early")
        digest.update(chunk)
        out.write(chunk)
        remaining -= len(chunk)
    return digest.hexdigest()


class Counted(io.RawIOBase):
    """Counts the decompressed bytes tarfile reads, so the end of a compressed pack can be
    checked against the length its metadata implies."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.source.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)

    def drain(self, limit: int) -> bytes:
        """What follows (what tarfile did not read), up to ``limit`` bytes kept, all counted."""
        kept = bytearray()
        while chunk := self.source.read(CHUNK):
            self.count += len(chunk)
            if len(kept) <= limit:
                kept += chunk
        return bytes(kept) if len(kept) <= limit else b"\1"


@contextmanager
def open_pack(pack: Path) -> Iterator[tuple[tarfile.TarFile, bool, Counted | None]]:
    """The pack as a tar; whether it is uncompressed (random access, kernel copies); and, for
    a compressed one, the counter of its decompressed bytes."""
    with pack.open("rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic == ZSTD_MAGIC:
            with open_pack_stream(raw, pack) as (tar, counted):
                yield tar, False, counted
            return
        try:  # uncompressed: random access, members copied by the kernel
            tar = tarfile.open(fileobj=raw, mode="r:")  # noqa: SIM115 (closed below)
        except tarfile.ReadError as error:
            raise _not_a_pack(pack, error) from error
        with tar:
            yield tar, True, None


@contextmanager
def open_pack_stream(raw: BinaryIO, pack: Path | str) -> Iterator[tuple[tarfile.TarFile, Counted]]:
    """A pack read once from start to end (standard input, a download), plain or zstd: the
    tar, and the counter of its (decompressed) tar bytes, for `check_end`."""
    head = _read_exactly(raw, 4)
    prefixed = _Prefixed(head, raw)
    compressed = head == ZSTD_MAGIC
    try:
        if compressed:
            source: Any = zstandard.ZstdDecompressor().stream_reader(
                cast(BinaryIO, prefixed), read_size=CHUNK, read_across_frames=True
            )
        else:
            source = prefixed
        counted = Counted(source)
        tar = tarfile.open(fileobj=counted, mode="r|", bufsize=CHUNK)  # noqa: SIM115
    except (tarfile.ReadError, zstandard.ZstdError, EOFError) as error:
        if compressed:
            raise PackError(
                f"{pack} is truncated or corrupt: its zstd stream holds no complete tar",
                REDO,
            ) from error
        raise _not_a_pack(pack, error) from error
    with tar:
        yield tar, counted


def _not_a_pack(pack: Path | str, error: Exception) -> PackError:
    return PackError(
        f"{pack} is not a pixi-deploy pack or is corrupt ({error})",
        "pass a file written by `pixi-deploy pack`",
    )


def _read_exactly(raw: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := raw.read(size - len(data))):
        data += chunk
    return data


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read to sniff the format), then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        self.head, self.raw = head, raw

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
