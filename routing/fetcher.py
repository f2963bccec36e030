"""Fetching a Grote Berichten reference: mutual-TLS HTTPS, resumable, checksum-verified.

The download streams into ``<part>``; a broken transfer resumes from the bytes already on
disk with ``Range`` (guarded by ``If-Range`` with the ETag, so a changed resource is
fetched anew). When the size is reached the file's SHA-256 is computed (streaming) and
compared with the reference: a mismatch removes the part (CHECKSUM_ERROR), a wrong length
likewise (INCORRECT_FILE_SIZE). Memory stays flat whatever the size.

With a ``peer_check`` (:class:`digipoort.pki.wiring.PeerCheck`) the server's certificate
is checked for revocation (the process's revocation service: CRLs and OCSP) on every new
connection, before the request; a refused server fails the fetch (FetchFailed).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import structlog

from digipoort.pki.wiring import PeerCheck, PeerRejected
from routing.grote_berichten import Reference

log = structlog.get_logger(__name__)
CHUNK = 1024 * 1024


class FetchFailed(Exception):
    """The document could not be fetched (yet); the message should be retried later."""


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _have(part: Path) -> int:
    try:
        return part.stat().st_size
    except FileNotFoundError:
        return 0


class ReferenceFetcher:
    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        attempts: int = 5,
        timeout: float = 300.0,
        retry_delay: float = 2.0,
        peer_check: PeerCheck | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._peer_check = peer_check
        #: Called with (file name, bytes so far, size) while downloading (a progress bar).
        self.on_progress: Callable[[str, int, int], None] | None = None
        self._attempts = attempts
        self._timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout, connect=30)
        self.retry_delay = retry_delay

    async def fetch(self, ref: Reference, part: Path) -> Path:
        await asyncio.to_thread(part.parent.mkdir, parents=True, exist_ok=True)
        connector = (
            self._peer_check.connector(self._ssl)
            if self._peer_check is not None
            else aiohttp.TCPConnector(ssl=self._ssl)
        )
        async with aiohttp.ClientSession(connector=connector, timeout=self._timeout) as session:
            for attempt in range(1, self._attempts + 1):
                have = _have(part)
                if have >= ref.size:
                    break
                try:
                    await self._download(session, ref, part, have)
                except PeerRejected as exc:
                    raise FetchFailed(f"server certificate refused: {exc.reason}") from None
                except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                    log.warning(
                        "download interrupted; resuming",
                        url=ref.url,
                        attempt=attempt,
                        have=_have(part),
                        error=repr(exc),
                    )
                    if attempt == self._attempts:
                        raise FetchFailed(f"download failed after {attempt} attempts") from exc
                    await asyncio.sleep(min(self.retry_delay * attempt, 30))
        return await asyncio.to_thread(self._verify, ref, part)

    async def _download(
        self, session: aiohttp.ClientSession, ref: Reference, part: Path, have: int
    ) -> None:
        headers = {"If-Range": f'"{ref.sha256}"', "Range": f"bytes={have}-"} if have else {}
        async with session.get(ref.url, headers=headers) as resp:
            if resp.status == 410:
                raise FetchFailed("reference expired")
            if resp.status == 200:
                have = 0  # the whole resource: start over
            elif resp.status != 206:
                raise FetchFailed(f"download refused: HTTP {resp.status}")
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | (0 if have else os.O_TRUNC), 0o640)
            try:
                os.lseek(fd, have, os.SEEK_SET)
                async for chunk in resp.content.iter_chunked(CHUNK):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    have += len(chunk)
                    if self.on_progress is not None:
                        self.on_progress(ref.filename, have, ref.size)
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _verify(ref: Reference, part: Path) -> Path:
        size = part.stat().st_size
        if size != ref.size:
            part.unlink(missing_ok=True)
            raise FetchFailed(f"INCORRECT_FILE_SIZE: {size} bytes, expected {ref.size}")
        if _sha256_of(part) != ref.sha256:
            part.unlink(missing_ok=True)
            raise FetchFailed("CHECKSUM_ERROR: SHA-256 differs from the reference")
        return part
