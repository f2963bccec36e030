"""Payload storage: large documents, content-addressed by SHA-256, streamed.

One interface (:class:`PayloadStore`) and a filesystem backend for one machine. Writes
stream through a hashing writer into a temporary file which is fsync'ed and renamed to
its digest, so a payload is either complete and durable or absent; identical payloads are
stored once. Another backend (an S3-compatible object store) implements the same protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from digipoort.envelope import StoredBlob

CHUNK = 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PayloadTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"payload exceeds the limit of {limit} bytes")
        self.limit = limit


class BlobWriter(Protocol):
    async def write(self, chunk: bytes) -> None: ...
    async def commit(self) -> StoredBlob: ...
    async def abort(self) -> None: ...


class PayloadStore(Protocol):
    def writer(self, limit: int | None = None) -> BlobWriter: ...
    async def put(self, data: bytes) -> StoredBlob: ...
    async def read(self, sha256: str) -> bytes: ...
    def stream(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]: ...
    async def size(self, sha256: str) -> int | None: ...
    async def age_seconds(self, sha256: str) -> float | None: ...
    async def delete(self, sha256: str) -> None: ...


def _valid_digest(sha256: str) -> str:
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError("not a SHA-256 hex digest")
    return sha256


class FileBlobWriter:
    def __init__(self, store: FilePayloadStore, limit: int | None) -> None:
        self._store = store
        self._limit = limit
        self._hash = hashlib.sha256()
        self._size = 0
        self._tmp = store.tmp_dir / f"{uuid.uuid4().hex}.part"
        self._fh = open(self._tmp, "wb")

    async def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._limit is not None and self._size > self._limit:
            await self.abort()
            raise PayloadTooLarge(self._limit)
        self._hash.update(chunk)
        await asyncio.to_thread(self._fh.write, chunk)

    async def commit(self) -> StoredBlob:
        digest = self._hash.hexdigest()
        final = self._store.path_for(digest)

        def _finish() -> None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists():  # deduplicated: keep the stored copy, mark it as in use
                self._tmp.unlink()
                os.utime(final)
            else:
                os.replace(self._tmp, final)
                fsync_dir(final.parent)

        await asyncio.to_thread(_finish)
        return StoredBlob(sha256=digest, size=self._size)

    async def abort(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        self._tmp.unlink(missing_ok=True)


class FilePayloadStore:
    """Filesystem backend: ``<root>/<aa>/<bb>/<sha256>``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        d = _valid_digest(sha256)
        return self.root / d[:2] / d[2:4] / d

    def writer(self, limit: int | None = None) -> FileBlobWriter:
        return FileBlobWriter(self, limit)

    async def put(self, data: bytes) -> StoredBlob:
        w = self.writer()
        try:
            for i in range(0, len(data), CHUNK):
                await w.write(data[i : i + CHUNK])
        except BaseException:
            await w.abort()
            raise
        return await w.commit()

    async def read(self, sha256: str) -> bytes:
        return await asyncio.to_thread(self.path_for(sha256).read_bytes)

    async def stream(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes ``start`` up to ``end`` (exclusive; None = to the end), in chunks."""
        fh = await asyncio.to_thread(open, self.path_for(sha256), "rb")
        try:
            await asyncio.to_thread(fh.seek, start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                n = CHUNK if remaining is None else min(CHUNK, remaining)
                chunk = await asyncio.to_thread(fh.read, n)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            fh.close()

    async def size(self, sha256: str) -> int | None:
        try:
            return (await asyncio.to_thread(self.path_for(sha256).stat)).st_size
        except FileNotFoundError:
            return None

    async def age_seconds(self, sha256: str) -> float | None:
        """Seconds since the payload was last written or deduplicated; None if absent."""
        try:
            mtime = (await asyncio.to_thread(self.path_for(sha256).stat)).st_mtime
        except FileNotFoundError:
            return None
        return max(0.0, time.time() - mtime)

    async def delete(self, sha256: str) -> None:
        await asyncio.to_thread(self.path_for(sha256).unlink, True)
