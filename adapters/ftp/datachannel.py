"""The data channel of an FTP session: passive mode (PASV/EPSV), the TLS data connection,
and the one transfer task a session runs at a time.

Invariant: data flows only over a protected connection (``PBSZ 0`` + ``PROT P`` first,
else 521) accepted on the port this session opened, and a client certificate on it must
carry the session's OIN (else 425). At most one transfer runs; while it runs the control
connection takes only ABOR, QUIT and NOOP (:meth:`adapters.ftp.session.Session.dispatch`),
and a transfer that fails unexpectedly is answered 451 "nothing was submitted".
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable

from adapters.ftp import metrics
from adapters.ftp.commands import epsv_reply, pasv_reply
from adapters.ftp.passive import DataConnectionError, DataListener
from adapters.ftp.sessionbase import READ_CHUNK, SessionBase
from adapters.ftp.tlsstream import TlsStream
from digipoort.pki import peer_certificate
from digipoort.pki.trust import oin_from_certificate

DATA_ACCEPT_TIMEOUT = 30.0


class DataChannel(SessionBase):
    """PASV/EPSV and the transfer plumbing the listing, download and upload commands use."""

    async def _open_passive(self) -> DataListener | None:
        if not self.prot_p:
            await self.refuse(521, "PBSZ 0 and PROT P required first", "prot_not_p")
            return None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        try:
            self.listener = await self.s.ports.open(self.peer_ip, self.s.ssl_context, 30.0)
        except DataConnectionError as exc:
            await self.refuse(425, "No passive port available", exc.reason)
            return None
        return self.listener

    async def cmd_PASV(self, arg: str) -> None:
        listener = await self._open_passive()
        if listener is not None:
            self.writer.write(pasv_reply(self.s.config.public_host, listener.port))
            await self.writer.drain()

    async def cmd_EPSV(self, arg: str) -> None:
        if arg.upper() == "ALL":
            await self.send(200, "EPSV ALL ok")
            return
        listener = await self._open_passive()
        if listener is not None:
            self.writer.write(epsv_reply(listener.port))
            await self.writer.drain()

    async def accept_data(self) -> TlsStream | None:
        """After the 150: the data connection (TLS done), checked against our identity."""
        listener, self.listener = self.listener, None
        assert listener is not None
        try:
            stream = await listener.accept(DATA_ACCEPT_TIMEOUT)
        except DataConnectionError as exc:
            await self.refuse(425, "Cannot open data connection", exc.reason)
            return None
        cert = peer_certificate(stream.ssl_object)
        if cert is not None and oin_from_certificate(cert) != self.oin:
            stream.abort()
            await self.refuse(425, "Data connection certificate mismatch", "data_cert_mismatch")
            return None
        return stream

    async def need_data(self) -> bool:
        if not self.prot_p:
            await self.refuse(521, "PBSZ 0 and PROT P required first", "prot_not_p")
            return False
        if self.listener is None:
            await self.refuse(425, "Use PASV or EPSV first", "no_passive")
            return False
        return True

    async def send_bytes(self, data: bytes, what: str) -> None:
        await self.send(150, f"Opening data connection for {what}")
        stream = await self.accept_data()
        if stream is None:
            return
        try:
            view = memoryview(data)
            for i in range(0, len(view), READ_CHUNK):
                await stream.write(bytes(view[i : i + READ_CHUNK]))
            metrics.DOWNLOAD_BYTES.inc(len(data))
            await stream.close()
        except (ConnectionError, ssl.SSLError):
            stream.abort()
            await self.refuse(426, "Data connection lost", "download_broken")
            return
        await self.send(226, "Transfer complete")

    def start_transfer(self, coro: Awaitable[None]) -> None:
        async def wrapped() -> None:
            try:
                await coro
            except (ConnectionError, ssl.SSLError) as exc:
                self.log.info("ftp.transfer_error", error=repr(exc))
            except Exception as exc:
                self.log.error("ftp.transfer_failed", error=repr(exc))
                metrics.UPLOADS.labels("error").inc()
                with contextlib.suppress(Exception):
                    await self.refuse(451, "Local error; nothing was submitted", "local_error")

        self.transfer = asyncio.get_running_loop().create_task(wrapped())

    async def abort_transfer(self) -> None:
        task = self.transfer
        if task is None or task.done():
            await self.send(226, "No transfer to abort")
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.refuse(426, "Transfer aborted; nothing was submitted", "aborted")
        await self.send(226, "ABOR successful")
