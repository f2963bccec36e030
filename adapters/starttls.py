"""STARTTLS-style upgrades (POP3 ``STLS``, FTP ``AUTH TLS``) without command injection.

CVE-2011-0411 class: a client (or a man in the middle) pipelines plaintext commands
behind the upgrade command in one write, e.g. ``STLS\\r\\nUSER x\\r\\n``. Those bytes sit
in the StreamReader's buffer and would be read *after* the handshake as if they had
arrived inside TLS. :func:`upgrade` stops reading before the go-ahead reply is sent,
throws away everything buffered, and only then starts TLS: from that moment on the
socket's bytes are read by the TLS layer only (plaintext sent later is not a TLS record
and fails the handshake).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable

__all__ = ["discard_buffered", "upgrade"]


def discard_buffered(reader: asyncio.StreamReader) -> int:
    """Drop whatever ``reader`` holds unread; return how many bytes that was.

    asyncio has no public API for this; ``_buffer`` is the StreamReader's bytearray
    (stable since Python 3.4)."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    n = len(buffer)
    buffer.clear()
    return n


async def upgrade(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    context: ssl.SSLContext,
    go_ahead: Callable[[], Awaitable[None]],
    *,
    handshake_timeout: float = 30.0,
) -> int:
    """Pause reading, discard buffered plaintext, send the go-ahead (``go_ahead()``
    writes and drains the reply), then the TLS handshake. Returns the number of
    discarded plaintext bytes (> 0 means commands were pipelined behind the upgrade:
    log and count it). Raises what the handshake raises."""
    transport = writer.transport
    assert isinstance(transport, asyncio.ReadTransport)
    transport.pause_reading()  # nothing more enters the plaintext buffer
    discarded = discard_buffered(reader)
    await go_ahead()
    await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
    return discarded
