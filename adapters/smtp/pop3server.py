"""The ``pop3`` component: the asyncio shell around :mod:`adapters.smtp.pop3proto`.

One mailbox per sender OIN (table ``pop3_mailbox``). Login after STLS: with a verified
client certificate, ``USER <OIN>`` + any ``PASS`` when the certificate carries that OIN;
without one, the participant's password (``digipoort participants password``). Deletions
(DELE) take effect at QUIT, in one statement. A mailbox is locked per process while a
session has it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import replace

import asyncpg
import structlog

from adapters.smtp import metrics, store
from adapters.smtp.passwords import verify_password
from adapters.smtp.pop3proto import (
    MAX_LINE,
    Authenticate,
    CommandError,
    Entry,
    Pop3Session,
    Quit,
    Reply,
    Retrieve,
    StartTls,
    dot_stuff,
    parse_command,
    top,
)
from adapters.smtp.server import tls_context, verifiers
from adapters.starttls import upgrade
from digipoort.app import LISTEN_BACKLOG, Gateway, shares_ports
from digipoort.pki import CertificateRejected, CertificateVerifier, peer_certificate
from digipoort.pki.wiring import revocation_service

log = structlog.get_logger(__name__)

__all__ = ["Pop3Server", "start"]


class Pop3Server:
    def __init__(
        self,
        pool: asyncpg.Pool,
        verifier: CertificateVerifier,
        context: ssl.SSLContext,
        *,
        timeout: float,
        max_sessions: int,
    ) -> None:
        self.pool = pool
        self.verifier = verifier
        self.context = context
        self.timeout = timeout
        self.max_sessions = max_sessions
        self.active = 0
        self.locked: set[str] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = str(writer.get_extra_info("peername"))
        if self.active >= self.max_sessions:  # no await before the count: atomic
            metrics.POP3_SESSIONS.labels("busy").inc()
            self._refused("busy", peer, None)
            writer.write(b"-ERR [SYS/TEMP] too many sessions, try again later\r\n")
            with contextlib.suppress(Exception):
                await writer.drain()
                writer.close()
            return
        self.active += 1
        self.writers.add(writer)
        metrics.POP3_ACTIVE.inc()
        metrics.POP3_SESSIONS.labels("opened").inc()
        session = Pop3Session()
        try:
            await self._serve(reader, writer, session, peer)
        except TimeoutError:
            metrics.POP3_SESSIONS.labels("timeout").inc()
            self._refused("timeout", peer, session.user)
            with contextlib.suppress(Exception):
                writer.write(b"-ERR [SYS/TEMP] timeout\r\n")
        except ssl.SSLError as exc:  # no reply possible
            reason = "tls_error" if session.tls else "tls_handshake"  # during/after STLS
            self._refused(reason, peer, session.user, error=exc.reason or "ssl_error")
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("pop3.connection_lost", peer=peer, error=type(exc).__name__)
        except Exception:
            log.exception("pop3.session_failed", peer=peer)
        finally:
            if session.user is not None and session.state != "authorization":
                self.locked.discard(session.user)
            self.active -= 1
            self.writers.discard(writer)
            metrics.POP3_ACTIVE.dec()
            with contextlib.suppress(Exception):
                writer.close()
                await writer.wait_closed()

    async def _serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        session: Pop3Session,
        peer: str,
    ) -> None:
        writer.write(session.greeting().render())
        await writer.drain()
        while True:
            async with asyncio.timeout(self.timeout):
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    too_long = session.error("line too long", "line_too_long")
                    await self._send(writer, too_long, peer, session)
                    return
                except asyncio.IncompleteReadError:
                    return
            try:
                action = session.handle(parse_command(line))
            except CommandError as exc:
                action = session.error(str(exc), "syntax")
            reply = await self._perform(action, session, reader, writer, peer)
            if reply is not None:
                await self._send(writer, reply, peer, session)
                if reply.close:
                    return

    @staticmethod
    def _refused(reason: str, peer: str, user: str | None, **detail: object) -> None:
        """Every refusal: one log line ``pop3.refused`` and ``digipoort_pop3_refused_total``."""
        metrics.POP3_COMMANDS_REFUSED.labels(reason).inc()
        log.info("pop3.refused", peer=peer, reason=reason, user=(user or "")[:40], **detail)

    async def _send(
        self, writer: asyncio.StreamWriter, reply: Reply, peer: str, session: Pop3Session
    ) -> None:
        if not reply.ok and reply.reason:  # reason None: counted where it was decided
            self._refused(reply.reason, peer, session.user)
        writer.write(reply.render())
        await writer.drain()

    async def _perform(
        self,
        action: Reply | StartTls | Authenticate | Retrieve | Quit,
        session: Pop3Session,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer: str,
    ) -> Reply | None:
        if isinstance(action, Reply):
            return action
        if isinstance(action, StartTls):
            go_ahead = action.reply
            discarded = await upgrade(
                reader, writer, self.context, lambda: self._send(writer, go_ahead, peer, session)
            )
            if discarded:  # CVE-2011-0411: plaintext pipelined behind STLS is never run
                self._refused("pipelined_before_tls", peer, None, discarded=discarded)
            session.tls_started(*await self._certificate(writer))
            return None
        if isinstance(action, Authenticate):
            return await self._login(action, session, peer)
        if isinstance(action, Retrieve):
            assert session.user is not None
            data = await store.fetch_message(self.pool, session.user, action.entry.id)
            if data is None:
                return session.error("[SYS/TEMP] message no longer available", "gone")
            body = dot_stuff(data if action.lines is None else top(data, action.lines))
            size = action.entry.size
            writer.write(f"+OK {size} octets\r\n".encode() + body + b".\r\n")
            await writer.drain()
            return None
        assert session.user is not None
        try:
            removed = await store.delete_messages(
                self.pool, session.user, [e.id for e in action.deleted]
            )
        except Exception as exc:
            log.error("pop3.delete_failed", user=session.user, error=repr(exc))
            return Reply(
                False, "[SYS/TEMP] deleted messages not removed", close=True, reason="delete_failed"
            )
        metrics.RETURN_MAILS_DELETED.inc(removed)
        log.info("pop3.quit", user=session.user, deleted=removed)
        return Reply(True, f"bye ({removed} messages deleted)", close=True)

    async def _certificate(self, writer: asyncio.StreamWriter) -> tuple[str | None, str | None]:
        ssl_object = writer.get_extra_info("ssl_object")
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        if cert is None:
            return None, None
        try:  # the shared revocation service: a revoked certificate cannot log in
            return (await self.verifier.verify_async(cert)).oin, None
        except CertificateRejected as rejected:
            return None, rejected.reason

    async def _login(self, action: Authenticate, session: Pop3Session, peer: str) -> Reply:
        user = action.user
        ok = action.password is None  # the certificate proved the OIN
        if not ok:
            stored = await store.get_password_hash(self.pool, user)
            if stored is not None:
                ok = await asyncio.to_thread(verify_password, action.password or "", stored)
        if not ok:
            metrics.POP3_SESSIONS.labels("auth_failed").inc()
            self._refused("auth_failed", peer, user)  # never the password
            return replace(session.login_failed(), reason=None)  # counted just now
        if user in self.locked:
            session.user = None
            return Reply(False, "[IN-USE] mailbox in use", reason="in_use")
        entries = [Entry(e.id, e.uid, e.size) for e in await store.list_mailbox(self.pool, user)]
        self.locked.add(user)
        metrics.POP3_SESSIONS.labels("authenticated").inc()
        log.info(
            "pop3.login",
            peer=peer,
            user=user,
            by="certificate" if action.password is None else "password",
        )
        return session.logged_in(entries)


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool is not None
    revocation = revocation_service(s)
    await revocation.start()
    verifier, _ = verifiers(s, "pop3")
    pop3 = Pop3Server(
        gateway.pool,
        verifier,
        tls_context(s, "pop3"),
        timeout=s.pop3.timeout_seconds,
        max_sessions=s.pop3.max_sessions,
    )
    server = await asyncio.start_server(
        pop3.handle,
        s.pop3.host,
        s.pop3.port,
        limit=MAX_LINE + 1,
        reuse_port=shares_ports(),
        backlog=LISTEN_BACKLOG,
    )
    log.info("pop3.listening", host=s.pop3.host, port=s.pop3.port)

    async def stop() -> None:
        server.close()
        for writer in list(pop3.writers):
            writer.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await server.wait_closed()
        await revocation.stop()

    return stop
