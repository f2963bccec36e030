"""Passive-mode data connections (PASV/EPSV) on the configured port range, with TLS.

One listener per PASV/EPSV, on a free port of ``passive_port_min..max``; it accepts a
single connection, only from the control connection's IP address (no port stealing or
FXP), then closes. TLS on the data connection uses the control connection's context, so
a client that resumes the control session's TLS session (curl, lftp, FileZilla) can.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import ssl

import structlog

from adapters.ftp import metrics
from adapters.ftp.tlsstream import TlsStream

log = structlog.get_logger(__name__)


class DataConnectionError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DataListener:
    def __init__(
        self,
        server: asyncio.Server,
        port: int,
        peer_ip: str,
        context: ssl.SSLContext,
        handshake_timeout: float,
    ) -> None:
        self._server = server
        self.port = port
        self._peer_ip = peer_ip
        self._context = context
        self._timeout = handshake_timeout
        self._conn: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue(maxsize=1)
        )

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer or peer[0] != self._peer_ip or self._conn.full():
            reason = "data_second_connection" if self._conn.full() else "data_foreign_peer"
            metrics.REFUSED.labels(reason).inc()  # no reply possible: the socket is reset
            log.warning("ftp.refused", code=0, reason=reason, peer=peer[0] if peer else None)
            writer.transport.abort()
            return
        self._conn.put_nowait((reader, writer))

    async def accept(self, wait: float) -> TlsStream:
        """The data connection, TLS handshake done. Raises DataConnectionError."""
        try:
            async with asyncio.timeout(wait):
                reader, writer = await self._conn.get()
        except TimeoutError:
            raise DataConnectionError("data_timeout", "No data connection") from None
        finally:
            self.close()
        stream = TlsStream(reader, writer, self._context)
        try:
            async with asyncio.timeout(self._timeout):
                await stream.handshake()
        except (TimeoutError, ssl.SSLError, ConnectionError) as exc:
            stream.abort()
            raise DataConnectionError("data_tls_failed", f"TLS on data connection: {exc}") from None
        return stream

    def close(self) -> None:
        self._server.close()


class PassivePorts:
    def __init__(self, host: str, low: int, high: int) -> None:
        self.host = host
        self.low = low
        self.high = high

    async def open(
        self, peer_ip: str, context: ssl.SSLContext, handshake_wait: float
    ) -> DataListener:
        ports = list(range(self.low, self.high + 1))
        random.shuffle(ports)
        for port in ports:
            holder: list[DataListener] = []
            callback = functools.partial(_dispatch, holder)

            try:
                server = await asyncio.start_server(
                    callback, self.host, port, reuse_address=True, backlog=1
                )
            except OSError:
                continue
            listener = DataListener(server, port, peer_ip, context, handshake_wait)
            holder.append(listener)
            return listener
        raise DataConnectionError("no_passive_port", "No free passive port")


def _dispatch(holder: list[DataListener], r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    if holder:
        holder[0]._on_connect(r, w)
    else:
        w.transport.abort()


async def close_quietly(stream: TlsStream | None) -> None:
    if stream is not None:
        with contextlib.suppress(Exception):
            await stream.close()
