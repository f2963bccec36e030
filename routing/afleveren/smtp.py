"""SMTP relay delivery (SMTP/MTA): the ``smtp`` channel of the deliverer.

A recipient registered with ``aflever.kind = "smtp"`` and
``aflever.url = "smtp://<host>[:<port>]/<recipient address>"`` (port default 25) gets
every envelope as one mail:

* ``Subject: [V=<sender OIN>][A=<recipient OIN>][K=<aanleverkenmerk>]``,
  ``X-Digipoort-Kenmerk: <kenmerk>``, ``X-Digipoort-Berichtsoort``, and
  ``Message-ID: <<kenmerk>@<smtp.domain>>`` — the same on every attempt, so the
  recipient can recognise a repeat;
* a text part naming the envelope, then the document (berichtInhoud) and the bijlagen as
  attachments with their MIME types and file names, bytes unchanged (base64); a document
  above ``grote_berichten.threshold_bytes`` travels as its Digikoppeling Grote Berichten
  reference document (``application/x-digikoppeling-gb+xml``), as in a WUS push.

Transport: EHLO, then STARTTLS is **required** (an MTA not offering it is a failed
attempt; nothing is ever sent in plain text), with the gateway certificate
(``pki.cert_file``/``key_file``) as client certificate; the MTA's certificate must chain
to ``pki.ca_file`` and match the URL's host name. Success is only a 250 reply to the end
of DATA. A 4xx reply, a refused or broken connection, a TLS failure or a timeout is a
failed attempt (:class:`DeliveryFailed`, retried: 420); a 5xx reply is a permanent
refusal (:class:`DeliveryRefused`: 410 ``AFS620`` at once).

``build_relay_mail`` and ``parse_relay_url`` are pure; :class:`SmtpRelay` is the I/O.
The MIME building stays here (it is this channel's own format); only the subject line is
shared with the SMTP koppelvlak and comes from ``adapters/smtp/subject.py`` for now (it
belongs in the ground layer; see ``tests/test_layering.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit

import aiosmtplib
import structlog

from adapters.smtp.subject import format_subject
from digipoort.archive import Exchange, Recorder, disabled
from digipoort.envelope import EnvelopeRecord
from digipoort.pki import CertificateRejected, client_ssl_context
from digipoort.pki.wiring import PeerCheck
from routing.aflever_body import RecipientDocument
from routing.afleveren.channel import (
    DeliveryFailed,
    DeliveryRefused,
    Outgoing,
    Receipt,
    archive_receipt,
)

__all__ = [
    "RelayTarget",
    "RelayUrlError",
    "SmtpRelay",
    "build_relay_mail",
    "mail_bytes",
    "parse_relay_url",
]

log = structlog.get_logger(__name__)

DEFAULT_PORT: Final = 25
_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9.-]{1,253}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Flattening: CRLF, and no folding of the (at most ~110 characters) subject.
_POLICY: Final = policy.SMTP.clone(max_line_length=998)
_MIME = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$"
)


class RelayUrlError(ValueError):
    pass


@dataclass(frozen=True)
class RelayTarget:
    host: str
    port: int
    address: str  # the recipient's mailbox (RCPT TO)

    def __str__(self) -> str:
        return f"smtp://{self.host}:{self.port}/{self.address}"


def parse_relay_url(url: str) -> RelayTarget:
    """``smtp://host[:port]/local@domain`` → target; raise :class:`RelayUrlError`."""
    try:
        parts = urlsplit(url)
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise RelayUrlError(f"ongeldige SMTP-URL: {exc}") from None
    if parts.scheme.lower() != "smtp":
        raise RelayUrlError("SMTP-URL moet met smtp:// beginnen")
    if parts.username is not None or parts.password is not None:
        raise RelayUrlError("SMTP-URL mag geen gebruikersnaam of wachtwoord bevatten")
    if not parts.hostname:
        raise RelayUrlError("SMTP-URL zonder host")
    if parts.query or parts.fragment:
        raise RelayUrlError("SMTP-URL mag geen query of fragment hebben")
    address = unquote(parts.path.lstrip("/"))
    if not _ADDRESS.match(address):
        raise RelayUrlError("SMTP-URL noemt geen geldig ontvangstadres (pad: /naam@domein)")
    return RelayTarget(parts.hostname, port, address)


def _clean(value: str, limit: int = 200) -> str:
    return _CONTROL.sub("", value)[:limit]


def _mime(doc: RecipientDocument) -> tuple[str, str]:
    mime = doc.mime_type.strip().lower()
    if not _MIME.match(mime):
        mime = "application/octet-stream"
    maintype, _, subtype = mime.partition("/")
    return maintype, subtype


def build_relay_mail(
    record: EnvelopeRecord,
    documents: list[RecipientDocument],
    *,
    recipient_oin: str,
    to: str,
    sender: str,
    domain: str,
) -> EmailMessage:
    """The mail for one envelope to one recipient. Pure (but for the Date header)."""
    msg = EmailMessage(policy=policy.SMTP)  # bodies: base64 lines of 76
    msg["From"] = f"Digipoort <{sender}>"
    msg["To"] = to
    msg["Subject"] = format_subject(record.sender_oin, recipient_oin, record.aanleverkenmerk)
    msg["Message-ID"] = f"<{record.kenmerk}@{domain}>"
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["X-Digipoort-Kenmerk"] = str(record.kenmerk)
    msg["X-Digipoort-Berichtsoort"] = _clean(record.berichtsoort, 80)
    lines = [
        "Aflevering via Digipoort (SMTP).",
        "",
        f"kenmerk: {record.kenmerk}",
        f"berichtsoort: {_clean(record.berichtsoort, 80)}",
        f"berichtkenmerk: {_clean(record.berichtkenmerk)}",
        f"aanleverkenmerk: {_clean(record.aanleverkenmerk or '')}",
        f"identiteitAanleveraar: {record.sender_oin}",
        f"identiteitBelanghebbende: {_clean(record.belanghebbende.nummer)}"
        f" ({_clean(record.belanghebbende.type)})",
        f"tijdstempelAangeleverd: {record.tijdstempel_aangeleverd.isoformat()}",
        "",
        "Het eerste attachment is de berichtInhoud; de volgende zijn de bijlagen.",
        "",
    ]
    msg.set_content("\n".join(lines))
    for doc in sorted(documents, key=lambda d: d.seq):
        maintype, subtype = _mime(doc)
        msg.add_attachment(
            doc.content,
            maintype=maintype,
            subtype=subtype,
            filename=_clean(doc.bestandsnaam) or f"document-{doc.seq}",
        )
    return msg


def mail_bytes(msg: EmailMessage) -> bytes:
    """The mail as sent: CRLF line ends, the subject on one line."""
    return msg.as_bytes(policy=_POLICY)


def _reply_text(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"SMTP {exc.code} {_clean(exc.message)}".strip()


def _tls_reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason, and for a refused certificate why (e.g. "certificate revoked")."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{exc.reason} ({exc.verify_message})"
    return str(exc.reason)


class SmtpRelay:
    """The ``smtp`` :class:`~routing.afleveren.channel.Channel`."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        *,
        sender: str,
        domain: str,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        peer_check: PeerCheck | None = None,
        archive: Recorder | None = None,
    ) -> None:
        self._ssl = ssl_context or client_ssl_context(cert_file, key_file, ca_file)
        self._peer_check = peer_check
        self._archive = archive or disabled()  # docs/archive.md: final replies are archived
        self._sender = sender
        self._domain = domain
        self._timeout = timeout

    async def deliver(self, out: Outgoing) -> Receipt:
        """The :class:`~routing.afleveren.channel.Channel` method (= :meth:`send`)."""
        return await self.send(out)

    async def send(self, out: Outgoing) -> Receipt:
        url = out.participant.aflever.url or ""
        try:
            target = parse_relay_url(url)
        except RelayUrlError as exc:
            raise DeliveryFailed(str(exc)) from None
        msg = build_relay_mail(
            out.record,
            out.documents,
            recipient_oin=out.participant.oin,
            to=target.address,
            sender=self._sender,
            domain=self._domain,
        )
        data = mail_bytes(msg)
        archived, final = await self._deliver(target, data)
        sent = {
            "mta": f"{target.host}:{target.port}",
            "mail_sha256": hashlib.sha256(data).hexdigest(),
        }
        # delivered only once the final reply is archived (docs/archive.md)
        receipt = await archive_receipt(
            archived,
            Receipt("aflever.smtp.reply", final.encode(), sent),
            oin=out.participant.oin,
            kenmerk=out.kenmerk,
            unavailable="eindantwoord van de MTA niet gearchiveerd: archief niet beschikbaar",
        )
        log.info(
            "smtp.relay.delivered",
            kenmerk=str(out.kenmerk),
            recipient=out.participant.oin,
            mta=f"{target.host}:{target.port}",
            size=len(data),
        )
        return receipt

    async def _check_peer(self, smtp: aiosmtplib.SMTP) -> None:
        """The MTA's certificate, checked for revocation (CRL and OCSP) before any mail."""
        if self._peer_check is None:
            return
        try:
            await self._peer_check.check(smtp.get_transport_info("ssl_object"))
        except CertificateRejected as exc:
            raise DeliveryFailed(f"servercertificaat van de MTA afgewezen ({exc.reason})") from None

    async def _deliver(self, target: RelayTarget, data: bytes) -> tuple[Exchange, str]:
        smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            timeout=self._timeout,
            use_tls=False,
            start_tls=False,  # STARTTLS is issued below, and required
            local_hostname=self._domain,
        )
        try:
            async with asyncio.timeout(self._timeout):  # the whole attempt, DATA included
                await smtp.connect()
                await smtp.ehlo()
                if not smtp.supports_extension("starttls"):
                    raise DeliveryFailed(f"{target.host}:{target.port} biedt geen STARTTLS aan")
                await smtp.starttls(tls_context=self._ssl, server_hostname=target.host)
                if smtp.get_transport_info("sslcontext") is None:
                    raise DeliveryFailed("TLS niet tot stand gekomen")
                await self._check_peer(smtp)
                await smtp.ehlo()
                _refused, final = await smtp.sendmail(self._sender, [target.address], data)
                tls = smtp.get_transport_info("ssl_object")
                archived = self._archive.exchange("smtp", ssl_object=tls)
            # 250 to the end of DATA: delivered. QUIT is a courtesy and cannot undo that.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                async with asyncio.timeout(2.0):
                    await smtp.quit()
            return archived, final
        except DeliveryFailed:
            raise
        except TimeoutError:
            raise DeliveryFailed(f"time-out bij {target.host}:{target.port}") from None
        except aiosmtplib.SMTPRecipientsRefused as exc:
            refused = exc.recipients[0] if exc.recipients else None
            if refused is not None and 500 <= refused.code < 600:
                raise DeliveryRefused(_reply_text(refused)) from None
            raise DeliveryFailed(
                _reply_text(refused) if refused else "ontvanger geweigerd"
            ) from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise DeliveryRefused(_reply_text(exc)) from None
            raise DeliveryFailed(_reply_text(exc)) from None
        except ssl.SSLError as exc:
            raise DeliveryFailed(
                f"TLS met {target.host}:{target.port} mislukt: {_tls_reason(exc)}"
            ) from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ssl.SSLError):
                raise DeliveryFailed(
                    f"TLS met {target.host}:{target.port} mislukt: {_tls_reason(cause)}"
                ) from None
            raise DeliveryFailed(
                f"verbinding met {target.host}:{target.port} mislukt: {type(exc).__name__}"
            ) from None
        finally:
            smtp.close()
