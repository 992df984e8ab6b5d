"""SFTP file transfer that survives a dropped connection.

Uploads go to ``<remote>.part``; after a drop we reconnect and continue from the size
the ``.part`` already has, minus the writes that may still have been in flight (they are
pipelined, so the tail could contain a hole). The result is checked (size, and sha256 if
the remote has ``sha256sum``) before an atomic ``posix-rename`` puts it in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncssh

from pixi_deploy.errors import TransportError

from . import quoting
from .failures import LOST, RemoteFileNotFoundError, one_line
from .session import Session, _NotStarted

CHUNK = 256 * 1024
WINDOW = 16  # writes in flight
MAX_RESUMES = 5
Progress = Callable[[int, int], None]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sftp_error(exc: asyncssh.SFTPError, action: str, path: str) -> TransportError:
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return RemoteFileNotFoundError(f"cannot {action} {path!r}: no such file or directory")
    return TransportError(
        f"cannot {action} {path!r} on the edge node: {one_line(exc.reason)}",
        "check the path and its permissions",
    )


async def _write_from(
    session: Session,
    sftp: asyncssh.SFTPClient,
    local: Path,
    part: str,
    start: int,
    total: int,
    progress: Progress | None,
) -> None:
    """Write local[start:] into part at the same offsets, WINDOW writes in flight."""
    chunk = _chunk_size(sftp)
    async with sftp.open(part, "r+b" if start else "wb") as remote:
        pending: set[asyncio.Task[int]] = set()
        offset = done_bytes = start
        try:
            with local.open("rb") as fh:
                fh.seek(start)
                while offset < total or pending:
                    while offset < total and len(pending) < WINDOW:
                        data = fh.read(chunk)
                        pending.add(asyncio.ensure_future(_write(remote, data, offset)))
                        offset += len(data)
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    failed = [e for e in (t.exception() for t in done) if e is not None]
                    if failed:  # every task's error is retrieved, the first one raised
                        raise failed[0]
                    written = sum(task.result() for task in done)
                    session.stats.bytes_uploaded += written
                    done_bytes += written
                    if progress is not None:
                        progress(done_bytes, total)
        finally:  # let in-flight writes finish or fail (cancelling leaks asyncssh tasks)
            await asyncio.gather(*pending, return_exceptions=True)


def _chunk_size(sftp: asyncssh.SFTPClient) -> int:
    """One SFTP request per write: larger writes make asyncssh split them into tasks of its
    own whose errors it never collects when the connection drops."""
    limit = getattr(getattr(sftp, "limits", None), "max_write_len", 0) or CHUNK
    return min(CHUNK, int(limit))


async def _write(remote: asyncssh.SFTPClientFile, data: bytes, offset: int) -> int:
    await remote.write(data, offset)
    return len(data)


async def upload(
    session: Session, local: Path, remote: str, sha256: str, progress: Progress | None
) -> None:
    """Upload ``local`` to ``remote`` atomically, resuming after connection drops."""
    total = local.stat().st_size
    part = remote + ".part"
    resumes = 0
    while True:
        try:
            sftp = await session.sftp()
            parent = posixpath.dirname(remote)
            if parent:
                await sftp.makedirs(parent, exist_ok=True)
            have = await _size(sftp, part)
            start = max(0, min(have, total) - CHUNK * WINDOW)
            if have > total:
                start = 0
            await _write_from(session, sftp, local, part, start, total, progress)
            if have > total:
                await sftp.truncate(part, total)
            break
        except (*LOST, _NotStarted) as exc:
            resumes += 1
            session.drop()
            if resumes > MAX_RESUMES:
                raise TransportError(
                    f"upload of {local.name} to {session.where} kept losing the connection",
                    "check the network and run the command again; it will resume",
                ) from exc
            session.stats.upload_resumes += 1
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, "write", part) from None
    await _verify(session, part, total, sha256)
    await _rename(session, part, remote)


async def _size(sftp: asyncssh.SFTPClient, path: str) -> int:
    try:
        return (await sftp.stat(path)).size or 0
    except asyncssh.SFTPNoSuchFile:
        return 0


async def _verify(session: Session, part: str, total: int, sha256: str) -> None:
    sftp = await session.sftp()
    size = (await sftp.stat(part)).size
    if size != total:
        await sftp.remove(part)
        raise TransportError(
            f"uploaded {part!r} has {size} bytes, expected {total}", "run the upload again"
        )
    script = 'command -v sha256sum >/dev/null 2>&1 || exit 127; exec sha256sum -- "$1"'
    result = await session.run(quoting.sh_c(script, [part]), None, False, None, None, None)
    if result.exit_status == 127:
        return  # no sha256sum on the edge node: the size check has to do
    remote_sum = result.stdout.split()[0] if result.stdout.split() else ""
    if result.exit_status != 0 or remote_sum != sha256:
        await sftp.remove(part)
        raise TransportError(
            f"uploaded {part!r} does not match the local file's sha256", "run the upload again"
        )


async def _rename(session: Session, source: str, target: str) -> None:
    """Atomic replace (OpenSSH posix-rename), falling back to remove + rename."""
    sftp = await session.sftp()
    try:
        await sftp.posix_rename(source, target)
    except asyncssh.SFTPOpUnsupported:
        if await sftp.exists(target):
            await sftp.remove(target)
        await sftp.rename(source, target)
    except asyncssh.SFTPError as exc:
        raise _sftp_error(exc, "rename into", target) from None


async def put_bytes(session: Session, data: bytes, remote: str) -> None:
    """Write ``data`` to ``remote`` atomically (temporary file + rename)."""

    async def attempt() -> None:
        sftp = await session.sftp()
        tmp = f"{remote}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            parent = posixpath.dirname(remote)
            if parent:
                await sftp.makedirs(parent, exist_ok=True)
            async with sftp.open(tmp, "wb") as fh:
                await fh.write(data)
        except LOST as exc:
            raise _NotStarted() from exc  # nothing visible happened yet: safe to redo
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, "write", remote) from None
        session.stats.bytes_uploaded += len(data)
        await _rename(session, tmp, remote)

    await session.retrying(attempt)


async def read_bytes(session: Session, remote: str) -> bytes:
    async def attempt() -> bytes:
        sftp = await session.sftp()
        try:
            async with sftp.open(remote, "rb") as fh:
                data = await fh.read()
        except LOST as exc:
            raise _NotStarted() from exc
        except asyncssh.SFTPError as exc:
            raise _sftp_error(exc, "read", remote) from None
        return data if isinstance(data, bytes) else data.encode()

    return await session.retrying(attempt)


async def exists(session: Session, remote: str) -> bool:
    async def attempt() -> bool:
        sftp = await session.sftp()
        try:
            return bool(await sftp.exists(remote))
        except LOST as exc:
            raise _NotStarted() from exc

    return await session.retrying(attempt)
