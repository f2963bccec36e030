"""The ``smtp`` component: SMTP-MSA submission over STARTTLS with client certificates.

aiosmtpd runs on the gateway's own event loop. Per session: STARTTLS before MAIL (530),
a verified client certificate before MAIL (530/535), one flow address per mail (RCPT),
SIZE advertised and enforced while reading DATA (aiosmtpd discards everything past the
limit, so memory stays flat; 552). That raw limit is the base64 size of
``smtp.max_message_bytes`` plus headroom (:func:`~adapters.smtp.mime.raw_mail_limit`);
the decoded attachments must fit ``smtp.max_message_bytes`` and each document its flow's
limit (intake). The message is parsed by the pure
:func:`adapters.smtp.mime.parse_mail` in a worker thread, optionally S/MIME-verified,
handed to intake, and only after intake committed answered ``250 2.0.0 ... kenmerk``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from adapters.smtp import metrics, store
from adapters.smtp.codes import MailRefused, Refusal, intake_refusal, protocol_refusal
from adapters.smtp.flows import resolve_flow, smime_required
from adapters.smtp.mime import ParsedMail, parse_mail, raw_mail_limit
from adapters.smtp.smime import SmimeInvalid, verify_detached
from adapters.starttls import discard_buffered
from digipoort import archive
from digipoort.app import LISTEN_BACKLOG, Gateway, shares_ports
from digipoort.config import Settings
from digipoort.envelope import Aanlevering, Document, Identiteit
from digipoort.intake import IntakeRefused, IntakeUnavailable
from digipoort.pki import (
    CertificateRejected,
    CertificateVerifier,
    VerifiedIdentity,
    is_valid_oin,
    peer_certificate,
)
from digipoort.pki.wiring import participant_verifier, revocation_service, server_context

log = structlog.get_logger(__name__)

__all__ = ["SmtpHandler", "start"]


def _refuse(exc: MailRefused, **context: Any) -> Refusal:
    """Every refusal: one log line ``smtp.refused`` and ``digipoort_smtp_refused_total``."""
    metrics.SMTP_REFUSED.labels(exc.reason).inc()
    log.info("smtp.refused", reason=exc.reason, detail=exc.detail, **context)
    return Refusal(exc.reply())


class SmtpHandler:
    """aiosmtpd hooks. The identity of a session lives in ``session.auth_data``:
    a VerifiedIdentity, or the MailRefused that explains why there is none."""

    def __init__(
        self, gateway: Gateway, verifier: CertificateVerifier, smime: CertificateVerifier
    ) -> None:
        self.gateway = gateway
        self.settings: Settings = gateway.settings
        self.verifier = verifier
        self.smime_verifier = smime
        self.archive = archive.recorder(self.settings)  # docs/archive.md

    # -- identity ------------------------------------------------------------------------
    def handle_STARTTLS(self, server: SMTP, session: Session, envelope: Envelope) -> bool:
        ssl_object = (session.ssl or {}).get("ssl_object")
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        ident: VerifiedIdentity | MailRefused
        if cert is None:
            ident = MailRefused("client_cert_required")
        else:
            try:
                ident = self.verifier.verify(cert)
            except CertificateRejected as rejected:
                ident = MailRefused("client_cert_rejected", rejected.reason)
        session.auth_data = ident  # type: ignore[assignment]
        return True  # refusals are answered precisely at MAIL

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # no AUTH line: there are no mechanisms (the client certificate authenticates)
        kept = [r for r in responses[:-1] if not r.startswith("250-AUTH")]
        return [*kept, "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        """aiosmtpd's last resort: never a traceback or a class name in the reply."""
        if isinstance(error, TLSSetupException):  # the STARTTLS handshake failed
            cause = error.__cause__
            reason = getattr(cause, "reason", None) or type(cause).__name__
            metrics.SMTP_REFUSED.labels("tls_handshake").inc()
            log.info("smtp.refused", reason="tls_handshake", detail=str(reason)[:200])
            return ""  # aiosmtpd closes the connection; nothing is sent
        metrics.SMTP_REFUSED.labels("internal_error").inc()
        log.error("smtp.refused", reason="internal_error", exc_info=error)
        return Refusal(MailRefused("internal_error").reply())

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        ident = session.auth_data
        if session.ssl is None:
            return _refuse(MailRefused("starttls_required"), peer=str(session.peer))
        if not isinstance(ident, VerifiedIdentity):
            refusal = ident if isinstance(ident, MailRefused) else None
            refusal = refusal or MailRefused("client_cert_required")
            return _refuse(refusal, peer=str(session.peer))
        if any(not c.isprintable() for c in address):  # NUL, CR, bidi controls, ...
            return _refuse(MailRefused("bad_mail_from"), sender_oin=ident.oin)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        ident = session.auth_data
        assert isinstance(ident, VerifiedIdentity)  # MAIL was accepted
        ctx = {"sender_oin": ident.oin, "rcpt": address[:200]}
        if envelope.rcpt_tos:
            return _refuse(MailRefused("too_many_recipients"), **ctx)
        assert self.gateway.registry is not None
        registry = self.gateway.registry.current
        soort = resolve_flow(address, self.settings.smtp.domain, registry)
        if soort is None:
            return _refuse(MailRefused("unknown_flow_address", address[:200]), **ctx)
        fout = registry.authorise(
            sender_oin=ident.oin, berichtsoort=soort.name, koppelvlak="smtp", ontvanger_oin=None
        )
        if fout is not None:
            return _refuse(intake_refusal(IntakeRefused(fout.reden.value, fout.melding)), **ctx)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    # -- the message ---------------------------------------------------------------------
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        ident = session.auth_data
        assert isinstance(ident, VerifiedIdentity)
        ctx: dict[str, Any] = {"sender_oin": ident.oin, "rcpt": envelope.rcpt_tos[0][:200]}
        archived = self.archive.exchange("smtp", ssl_object=(session.ssl or {}).get("ssl_object"),
                                         peer=session.peer)  # fmt: skip
        reply = await self._data(ident, envelope, ctx, archived)
        kenmerk = ctx.get("kenmerk")  # fail-closed only for an acceptance (docs/archive.md)
        if not await archived.answered("smtp.reply", reply.encode(), kenmerk=kenmerk) and kenmerk:
            return _refuse(MailRefused("unavailable", "archive"), **ctx)
        return reply

    async def _data(
        self,
        ident: VerifiedIdentity,
        envelope: Envelope,
        ctx: dict[str, Any],
        archived: archive.Exchange,
    ) -> str:
        data, mail_from = envelope.original_content or b"", envelope.mail_from
        if not await archived.received("smtp.message", data, oin=ident.oin, mail_from=mail_from):
            return _refuse(MailRefused("unavailable", "archive"), **ctx)
        try:
            kenmerk = await self._submit(ident, envelope, ctx)
        except MailRefused as refusal:
            metrics.SMTP_MESSAGES.labels("refused").inc()
            return _refuse(refusal, **ctx)
        except IntakeUnavailable as exc:
            metrics.SMTP_MESSAGES.labels("error").inc()
            return _refuse(MailRefused("unavailable"), error=str(exc), **ctx)
        except Exception as exc:  # never leak internals as aiosmtpd's "500 Error: ..."
            metrics.SMTP_MESSAGES.labels("error").inc()
            return _refuse(MailRefused("unavailable"), exc_info=exc, **ctx)
        metrics.SMTP_MESSAGES.labels("accepted").inc()
        log.info("smtp.accepted", kenmerk=kenmerk, **ctx)
        ctx["kenmerk"] = kenmerk
        return f"250 2.0.0 OK: queued as kenmerk {kenmerk}"

    async def _submit(
        self, ident: VerifiedIdentity, envelope: Envelope, ctx: dict[str, Any]
    ) -> str:
        s = self.settings.smtp
        data = envelope.original_content or b""
        parsed = await asyncio.to_thread(parse_mail, data, max_parts=s.max_parts)
        ctx["message_id"] = (parsed.message_id or "")[:100]
        decoded = sum(len(att.content) for att in parsed.attachments)
        if decoded > s.max_message_bytes:  # each document: the flow's limit, at intake
            raise MailRefused(
                "too_large", f"attachments {decoded} bytes, at most {s.max_message_bytes}"
            )
        if parsed.subject.v != ident.oin:
            raise MailRefused("sender_mismatch", f"V={parsed.subject.v}")
        assert self.gateway.registry is not None and self.gateway.intake is not None
        soort = resolve_flow(envelope.rcpt_tos[0], s.domain, self.gateway.registry.current)
        if soort is None:  # the registry changed since RCPT
            raise MailRefused("unknown_flow_address", envelope.rcpt_tos[0][:200])
        signer = await self._check_smime(parsed, ident)
        if signer is None and smime_required(soort):
            raise MailRefused("smime_required")
        a = _aanlevering(ident.oin, soort.name, parsed)
        try:
            accepted = await self.gateway.intake.aanleveren(a)
        except IntakeRefused as exc:
            raise intake_refusal(exc) from None
        kenmerk = str(accepted.kenmerk)
        try:
            assert self.gateway.pool is not None
            await store.record_submission(
                self.gateway.pool,
                accepted.kenmerk,
                message_id=parsed.message_id,
                mail_from=(envelope.mail_from or "")[:320],
                signer=signer,
            )
        except Exception as exc:  # the envelope is committed: the kenmerk stands
            log.warning("smtp.record_failed", kenmerk=kenmerk, error=repr(exc))
        return kenmerk

    async def _check_smime(
        self, parsed: ParsedMail, ident: VerifiedIdentity
    ) -> VerifiedIdentity | None:
        if parsed.signed is None:
            return None
        try:
            signer = verify_detached(parsed.signed.signed_bytes, parsed.signed.signature_der)
        except SmimeInvalid as exc:
            raise MailRefused("smime_invalid", str(exc)) from None
        _check_smime_eku(signer.certificate)
        try:
            verified = self.smime_verifier.verify(signer.certificate, signer.chain)
        except CertificateRejected as rejected:
            raise MailRefused("smime_signer_rejected", rejected.reason) from None
        if verified.oin != ident.oin:
            raise MailRefused("smime_signer_mismatch", verified.oin)
        return verified


def _check_smime_eku(cert: x509.Certificate) -> None:
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    allowed = {
        ExtendedKeyUsageOID.EMAIL_PROTECTION,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE,
    }
    if not allowed.intersection(eku):
        raise MailRefused("smime_signer_rejected", "bad_usage")


def _aanlevering(sender_oin: str, berichtsoort: str, parsed: ParsedMail) -> Aanlevering:
    addressee = parsed.subject.a
    ontvanger = Identiteit(addressee, "OIN") if addressee and is_valid_oin(addressee) else None

    def doc(att: Any) -> Document:
        return Document(att.mime_type, att.bestandsnaam, content=att.content)

    return Aanlevering(
        sender_oin=sender_oin,
        koppelvlak="smtp",
        berichtsoort=berichtsoort,
        belanghebbende=Identiteit(sender_oin, "OIN"),
        rol_belanghebbende="Bedrijf",
        inhoud=doc(parsed.inhoud),
        bijlagen=tuple(doc(b) for b in parsed.bijlagen),
        aanleverkenmerk=parsed.subject.k,
        ontvanger=ontvanger,
        berichtkenmerk=parsed.message_id,
    )


# -- the protocol: bounded sessions, enhanced codes ------------------------------------------
class _Sessions:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0


class _Smtp(SMTP):
    def __init__(self, sessions: _Sessions, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions
        self._counted = False
        self._busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Called for the TCP connection and again after STARTTLS (the TLS transport).
        # The cap is decided here, synchronously, so no arrival pattern gets past it
        # (deciding in the protocol factory lets a burst of accepts through).
        if not self._counted:
            if self._sessions.active >= self._sessions.limit:
                self._busy = True
                metrics.SMTP_SESSIONS.labels("busy").inc()
                peer = str(transport.get_extra_info("peername"))
                reply = _refuse(MailRefused("busy"), peer=peer)
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(reply.encode() + b"\r\n")
                transport.close()
                return
            self._counted = True
            self._sessions.active += 1
            metrics.SMTP_ACTIVE.inc()
            metrics.SMTP_SESSIONS.labels("opened").inc()
        elif self._tls_protocol is not None:  # STARTTLS handshake done
            # Plaintext pipelined behind STARTTLS is never run (CVE-2011-0411; aiosmtpd
            # >= 1.4.6 discards it too, in super().connection_made).
            pipelined = discard_buffered(self._reader)
            if pipelined:
                metrics.SMTP_REFUSED.labels("pipelined_before_tls").inc()
                log.warning(
                    "smtp.refused",
                    reason="pipelined_before_tls",
                    discarded=pipelined,
                    peer=str(transport.get_extra_info("peername")),
                )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._busy:
            return  # the session never started
        if self._counted:
            self._counted = False
            self._sessions.active -= 1
            metrics.SMTP_ACTIVE.dec()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:  # aiosmtpd closes an idle session without a word
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            reply = _refuse(MailRefused("timeout"), peer=self._peer())
            transport.write(reply.encode() + b"\r\n")
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _peer(self) -> str:
        return str(self.session.peer) if self.session else ""

    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:  # no nested handshake inside TLS
            await self.push(_refuse(MailRefused("starttls_twice"), peer=self._peer()))
            return
        await super().smtp_STARTTLS(arg)

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str) -> None:
        await self.push(_refuse(MailRefused("auth_not_supported"), peer=self._peer()))

    async def push(self, status: Any) -> None:
        found = protocol_refusal(status) if isinstance(status, str) else None
        if found is not None:  # one of aiosmtpd's own refusals
            reason, reply = found
            metrics.SMTP_REFUSED.labels(reason).inc()
            log.info("smtp.refused", reason=reason, detail=status[:120], peer=self._peer())
            status = reply
        await super().push(status)


def verifiers(
    settings: Settings, port: str = "smtp"
) -> tuple[CertificateVerifier, CertificateVerifier]:
    """TLS client certificates and S/MIME signers; both ask the process's revocation
    service (refreshed in the background), so a revocation reaches SMTP and POP3."""
    return (
        participant_verifier(settings, port=port),
        participant_verifier(settings, required_eku=None, port=f"{port}_smime"),
    )


def tls_context(settings: Settings, port: str = "smtp") -> ssl.SSLContext:
    """TLS 1.2+, client certificate requested (and chain-verified if sent). Revocation
    and the OIN are checked by the CertificateVerifier, so a missing or revoked
    certificate gets a precise SMTP/POP3 reply instead of a failed handshake."""
    return server_context(settings, port, require_client_cert=False)


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    revocation = revocation_service(s)
    await revocation.start()
    # aiosmtpd's own stdlib log lines ("unrecognised: X", per-session info) repeat what
    # our structured smtp.* lines say; keep only its errors.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    tls_verifier, smime_verifier = verifiers(s)
    context = tls_context(s)
    handler = SmtpHandler(gateway, tls_verifier, smime_verifier)
    sessions = _Sessions(s.smtp.max_sessions)
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.BaseProtocol:
        return _Smtp(
            sessions,
            handler,
            data_size_limit=raw_mail_limit(s.smtp.max_message_bytes),
            hostname=s.smtp.domain,
            tls_context=context,
            require_starttls=True,
            timeout=s.smtp.timeout_seconds,
            command_call_limit=50,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            loop=loop,
        )

    server = await loop.create_server(
        factory, s.smtp.host, s.smtp.port, reuse_port=shares_ports(), backlog=LISTEN_BACKLOG
    )
    log.info("smtp.listening", host=s.smtp.host, port=s.smtp.port, domain=s.smtp.domain)

    async def stop() -> None:
        server.close()
        try:
            async with asyncio.timeout(5):
                await server.wait_closed()
        except TimeoutError:
            log.warning("smtp.stop_timeout")
        await revocation.stop()

    return stop
