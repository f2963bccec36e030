"""Partial uploads: one file per (account, virtual path), so an interrupted STOR resumes.

``<root_dir>/partial/<OIN>/<sha256(virtual path)>.part`` holds the bytes received so far;
``.name`` next to it the virtual path (for listings). The client's path never becomes a
file system path (no traversal, no symlinks). A completed upload is fsync'ed and moved
into the payload store under its SHA-256 (computed while streaming; on resume the kept
part is re-hashed first, streaming, so the digest always covers the whole file).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from digipoort.envelope import StoredBlob
from digipoort.payloads import PayloadStore

#: Bytes buffered before a write to disk (memory bound per upload).
WRITE_BUFFER = 1024 * 1024


@dataclass(frozen=True)
class PartialInfo:
    path: str  # virtual path
    size: int
    mtime: float


class LimitExceeded(Exception):
    def __init__(self, reason: str, limit: int) -> None:
        super().__init__(f"{reason}: limit {limit} bytes")
        self.reason = reason  # "too_large" | "quota"
        self.limit = limit


class PartialArea:
    def __init__(self, root: Path, oin: str) -> None:
        self.dir = root / "partial" / oin

    def _base(self, vpath: str) -> Path:
        return self.dir / hashlib.sha256(vpath.encode()).hexdigest()

    def file(self, vpath: str) -> Path:
        return self._base(vpath).with_suffix(".part")

    def size(self, vpath: str) -> int | None:
        try:
            return self.file(vpath).stat().st_size
        except FileNotFoundError:
            return None

    def _entries(self) -> Iterator[tuple[Path, Path]]:
        if not self.dir.is_dir():
            return
        for part in self.dir.glob("*.part"):
            yield part, part.with_suffix(".name")

    def list(self) -> list[PartialInfo]:
        out = []
        for part, name in self._entries():
            try:
                st = part.stat()
                out.append(PartialInfo(name.read_text("utf-8"), st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue
        return out

    def usage(self) -> int:
        total = 0
        for part, _ in self._entries():
            try:
                total += part.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def remove(self, vpath: str) -> bool:
        existed = self.file(vpath).exists()
        self.file(vpath).unlink(missing_ok=True)
        self._base(vpath).with_suffix(".name").unlink(missing_ok=True)
        return existed

    def expire(self, ttl: float, now: float | None = None) -> int:
        """Remove partial uploads untouched for ``ttl`` seconds; returns how many."""
        now = time.time() if now is None else now
        n = 0
        for part, name in self._entries():
            try:
                if now - part.stat().st_mtime > ttl:
                    part.unlink(missing_ok=True)
                    name.unlink(missing_ok=True)
                    n += 1
            except FileNotFoundError:
                continue
        return n


class Upload:
    """One STOR/APPE into the partial file: hashing and size checks on the way."""

    def __init__(self, area: PartialArea, vpath: str, *, limit: int, quota_left: int) -> None:
        self.area = area
        self.vpath = vpath
        self.limit = limit
        self.quota_left = quota_left  # bytes this upload may still add
        self.size = 0
        self.offset = 0
        self._hash = hashlib.sha256()
        self._buf = bytearray()
        self._fh: BinaryIO | None = None

    async def open(self, offset: int) -> None:
        """Start at ``offset`` (0 = fresh): the kept part is truncated there and re-hashed."""
        self.offset = offset

        def _open() -> None:
            self.area.dir.mkdir(parents=True, exist_ok=True)
            path = self.area.file(self.vpath)
            self.area._base(self.vpath).with_suffix(".name").write_text(self.vpath, "utf-8")
            fh = open(path, "r+b" if offset else "wb")
            fh.truncate(offset)
            fh.seek(0)
            remaining = offset
            while remaining:
                chunk = fh.read(min(remaining, WRITE_BUFFER))
                if not chunk:
                    break
                self._hash.update(chunk)
                remaining -= len(chunk)
            fh.seek(offset)
            self._fh = fh

        await asyncio.to_thread(_open)
        self.size = offset

    async def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise LimitExceeded("too_large", self.limit)
        if self.size - self.offset > self.quota_left:
            raise LimitExceeded("quota", self.quota_left)
        self._buf += chunk
        if len(self._buf) >= WRITE_BUFFER:
            await self._spill()

    async def _spill(self) -> None:
        data = bytes(self._buf)
        self._buf.clear()
        fh = self._fh
        assert fh is not None

        def _write() -> None:
            fh.write(data)
            self._hash.update(data)

        await asyncio.to_thread(_write)

    async def close(self, *, durable: bool) -> None:
        """Flush and close the partial file (kept for a later resume)."""
        if self._fh is None:
            return
        if self._buf:
            await self._spill()
        fh = self._fh
        self._fh = None

        def _close() -> None:
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
            fh.close()

        await asyncio.to_thread(_close)

    async def discard(self) -> None:
        if self._fh is not None:
            fh = self._fh
            self._fh = None
            self._buf.clear()
            await asyncio.to_thread(fh.close)
        await asyncio.to_thread(self.area.remove, self.vpath)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


async def promote(upload: Upload, store: PayloadStore) -> StoredBlob:
    """Move a completed (closed, fsync'ed) partial file into the payload store."""
    digest, size = upload.sha256, upload.size
    src = upload.area.file(upload.vpath)
    path_for = getattr(store, "path_for", None)
    if path_for is not None:
        final: Path = path_for(digest)

        def _move() -> bool:
            final.parent.mkdir(parents=True, exist_ok=True)
            if os.stat(final.parent).st_dev != os.stat(src).st_dev:
                return False
            if final.exists():
                src.unlink()
            else:
                os.replace(src, final)
                fd = os.open(final.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            upload.area.remove(upload.vpath)
            return True

        if await asyncio.to_thread(_move):
            return StoredBlob(digest, size)
    # another file system or backend: stream through the store's writer (re-hashes)
    writer = store.writer()
    try:
        with open(src, "rb") as fh:  # noqa: ASYNC230
            while chunk := await asyncio.to_thread(fh.read, WRITE_BUFFER):
                await writer.write(chunk)
    except BaseException:
        await writer.abort()
        raise
    blob = await writer.commit()
    await asyncio.to_thread(upload.area.remove, upload.vpath)
    return blob
