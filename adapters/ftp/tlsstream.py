"""TLS on the data connection over ``ssl.MemoryBIO``, so a truncated upload is visible.

asyncio's TLS transport reports a TCP FIN without a TLS ``close_notify`` as an ordinary
end of stream, so a client killed half-way through a STOR would look like a complete
file. Here the TLS engine is driven by hand: :meth:`TlsStream.read` returns ``b""`` only
after the peer's ``close_notify`` and raises :class:`Truncated` when the TCP stream ends
without one. Buffers stay bounded: at most one raw read plus one TLS record are held.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

RAW_READ = 256 * 1024


class Truncated(ConnectionError):
    """The peer closed TCP without a TLS close_notify: the transfer is incomplete."""


class TlsStream:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._in, self._out, server_side=True)
        self._eof = False

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> None:
        data = await self._reader.read(RAW_READ)
        if not data:
            self._in.write_eof()
            raise Truncated("connection closed without TLS close_notify")
        self._in.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl_object.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._fill()
        await self._flush()

    async def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; ``b""`` after the peer's close_notify; Truncated otherwise."""
        if self._eof:
            return b""
        chunks: list[bytes] = []
        got = 0
        while got < n:
            try:
                chunk = self.ssl_object.read(n - got)
            except ssl.SSLWantReadError:
                if chunks:
                    break
                await self._flush()  # e.g. TLS 1.3 session tickets
                await self._fill()
                continue
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            if not chunk:
                self._eof = True
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.ssl_object.write(view[:65536])
            view = view[n:]
            await self._flush()

    async def close(self, *, wait: float = 5.0) -> None:
        """Send close_notify, wait briefly for the peer's, close TCP."""
        with contextlib.suppress(Exception):
            async with asyncio.timeout(wait):
                while True:
                    try:
                        self.ssl_object.unwrap()
                        await self._flush()
                        break
                    except ssl.SSLWantReadError:
                        await self._flush()
                        if self._eof:
                            break
                        try:
                            await self._fill()
                        except Truncated:
                            break
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    def abort(self) -> None:
        self._writer.transport.abort()
