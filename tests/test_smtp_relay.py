"""SMTP relay delivery (``aflever.kind = "smtp"``): real sockets, real STARTTLS.

The recipient's MTA is an aiosmtpd server with the recipient's test certificate that
requires STARTTLS and a client certificate chained to the test CA; the gateway's
``deliverer`` relays each envelope as a mail, with the same schedule, statuses and
breaker as a WUS push.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import Envelope, Session

from digipoort.app import Gateway
from digipoort.devenv import ALFA, BELASTINGDIENST
from digipoort.envelope import Document
from digipoort.pki import client_ssl_context
from routing.afleveren.smtp import RelayUrlError, build_relay_mail, mail_bytes, parse_relay_url
from routing.grote_berichten import REFERENCE_MIME_TYPE, parse_reference
from tests.support import SAMPLES, Env, aanlevering, free_port, set_aflever, wait_for

COMPONENTS = ("intake", "sweeper", "validator", "router", "deliverer")
BD = BELASTINGDIENST
ADDRESS = "inbox@belastingdienst.test"


@dataclass
class Recorder:
    """What the test MTA saw. Filled from aiosmtpd's thread."""

    data_replies: list[str] = field(default_factory=list)  # replies to DATA, in order
    rcpt_reply: str | None = None
    mails: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str | None, list[str]]] = field(default_factory=list)
    plaintext_commands: list[str] = field(default_factory=list)
    client_certs: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_MAIL(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if session.ssl is None:
            with self.lock:
                self.plaintext_commands.append("MAIL")
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTPServer, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        with self.lock:
            if session.ssl is None:
                self.plaintext_commands.append("DATA")
            if self.data_replies:
                return self.data_replies.pop(0)
            assert server.transport is not None
            self.client_certs.append(server.transport.get_extra_info("peercert"))
            raw = envelope.original_content or b""
            self.mails.append(message_from_bytes(raw, policy=policy.default))  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 2.0.0 OK"


def mta_tls(pki: Path, name: str) -> ssl.SSLContext:
    """The MTA's TLS: its certificate; client certificates required, chained to the CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki / f"{name}.crt", pki / f"{name}.key")
    ctx.load_verify_locations(pki / "ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class Mta:
    def __init__(
        self, env: Env, port: int, *, cert: str = BD, require_starttls: bool = True
    ) -> None:
        self.recorder = Recorder()
        self.controller = Controller(
            self.recorder,
            hostname="127.0.0.1",
            port=port,
            tls_context=mta_tls(env.dir / "pki", cert),
            require_starttls=require_starttls,
            server_hostname="localhost",
        )

    async def start(self) -> Mta:
        await asyncio.to_thread(self.controller.start)
        return self

    async def stop(self) -> None:
        await asyncio.to_thread(self.controller.stop)


async def make_smtp_recipient(
    env: Env, oin: str, port: int, *, retry_for_hours: float | None = None
) -> None:
    await set_aflever(
        env, oin, "smtp", f"smtp://localhost:{port}/{ADDRESS}", retry_for_hours=retry_for_hours
    )


def fast_retries(env: Env) -> None:
    a = env.settings.aflever
    a.base_delay_seconds = 0.2
    a.max_delay_seconds = 0.5
    a.timeout_seconds = 5.0
    a.breaker_failures = 1000


@pytest.fixture
async def mta_stack() -> AsyncIterator[list[Mta]]:
    started: list[Mta] = []
    yield started
    for m in started:
        await m.stop()


async def submit(gw: Gateway, n: int = 1, **kw: Any) -> list[UUID]:
    assert gw.intake is not None
    return [
        (await gw.intake.aanleveren(aanlevering("Omzetbelasting", **kw))).kenmerk for _ in range(n)
    ]


async def codes(env: Env, kenmerk: UUID, oin: str = BD) -> list[str]:
    return [s.code for s in await env.history(kenmerk) if s.recipient_oin == oin]


async def delivery(env: Env, kenmerk: UUID, oin: str = BD) -> dict[str, object]:
    row = await (await env.conn()).fetchrow(
        "SELECT * FROM deliveries WHERE kenmerk = $1 AND recipient_oin = $2", kenmerk, oin
    )
    assert row is not None
    return dict(row)


# ---------------------------------------------------------------------- pure


def test_relay_url_form() -> None:
    t = parse_relay_url("smtp://mail.douane.test:2525/inbox@douane.test")
    assert (t.host, t.port, t.address) == ("mail.douane.test", 2525, "inbox@douane.test")
    assert parse_relay_url("smtp://mx.example.nl/a.b%2Bc@example.nl").port == 25
    assert parse_relay_url("smtp://mx.example.nl/a.b%2Bc@example.nl").address == "a.b+c@example.nl"
    for bad in (
        "https://mx.example.nl/a@b.nl",
        "smtp://user:secret@mx.example.nl/a@b.nl",
        "smtp://mx.example.nl/",
        "smtp://mx.example.nl/not-an-address",
        "smtp://mx.example.nl/a@b.nl?x=1",
        "smtp:///a@b.nl",
        "smtp://mx.example.nl/a@b.nl%0d%0aRCPT",
    ):
        with pytest.raises(RelayUrlError):
            parse_relay_url(bad)


# ---------------------------------------------------------------------- end to end


async def test_mail_with_attachments_subject_and_headers_gives_400(
    env: Env, mta_stack: list[Mta]
) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    mta = await Mta(env, port).start()
    mta_stack.append(mta)
    gw = await env.start_gateway(components=COMPONENTS)
    bijlage = Document("application/pdf", "toelichting.pdf", content=b"%PDF-1.4 test\x00\xff")
    (kenmerk,) = await submit(gw, aanleverkenmerk="ref-42", bijlagen=(bijlage,))
    await env.wait_status(kenmerk, "400", recipient=BD, timeout=30)

    assert await codes(env, kenmerk) == ["405", "400"]
    assert len(mta.recorder.mails) == 1 and not mta.recorder.plaintext_commands
    mail = mta.recorder.mails[0]
    assert mail["Subject"] == f"[V={ALFA}][A={BD}][K=ref-42]"
    assert mail["X-Digipoort-Kenmerk"] == str(kenmerk)
    assert mail["Message-ID"] == f"<{kenmerk}@{env.settings.smtp.domain}>"
    assert mail["To"] == ADDRESS
    assert mta.recorder.envelopes[0][1] == [ADDRESS]
    attachments = list(mail.iter_attachments())
    assert [(a.get_content_type(), a.get_filename()) for a in attachments] == [
        ("text/xml", "bericht.xml"),
        ("application/pdf", "toelichting.pdf"),
    ]
    assert attachments[0].get_payload(decode=True) == (SAMPLES / "omzetbelasting.xml").read_bytes()
    assert attachments[1].get_payload(decode=True) == b"%PDF-1.4 test\x00\xff"
    # our client certificate was presented (the MTA requires one chained to the CA)
    subject = dict(x[0] for x in mta.recorder.client_certs[0]["subject"])
    assert subject["serialNumber"].endswith(env.settings.gateway_oin)
    row = await delivery(env, kenmerk)
    assert row["state"] == "delivered" and row["attempts"] == 1 and row["channel"] == "smtp"


async def test_mta_down_then_up_delivers_exactly_once(env: Env, mta_stack: list[Mta]) -> None:
    port = free_port()  # nobody listens yet
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    gw = await env.start_gateway(components=COMPONENTS)
    kenmerken = await submit(gw, 2)

    async def retried() -> bool:
        counts = [(await codes(env, k)).count("420") for k in kenmerken]
        return all(n >= 2 for n in counts)

    await wait_for(retried, timeout=30, what="two failed attempts per envelope")
    mta = await Mta(env, port).start()
    mta_stack.append(mta)
    for k in kenmerken:
        await env.wait_status(k, "400", recipient=BD, timeout=30)
    for k in kenmerken:
        c = await codes(env, k)
        assert c[0] == "405" and c[-1] == "400" and c.count("400") == 1
        assert set(c[1:-1]) == {"420"}, c
        failed = [s for s in await env.history(k) if s.code == "420"]
        assert all(s.foutcode == "AFS400" and "poging" in (s.details or "") for s in failed)
        assert (await delivery(env, k))["attempts"] == c.count("420") + 1
    received = [m["X-Digipoort-Kenmerk"] for m in mta.recorder.mails]
    assert sorted(received) == sorted(str(k) for k in kenmerken)  # each exactly once


async def test_4xx_reply_is_retried(env: Env, mta_stack: list[Mta]) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    mta = await Mta(env, port).start()
    mta_stack.append(mta)
    mta.recorder.data_replies = ["451 4.3.0 Mailbox busy, try later"] * 2
    gw = await env.start_gateway(components=COMPONENTS)
    (kenmerk,) = await submit(gw)
    history = await env.wait_status(kenmerk, "400", recipient=BD, timeout=30)
    assert await codes(env, kenmerk) == ["405", "420", "420", "400"]
    details = [s.details or "" for s in history if s.code == "420"]
    assert details == [
        "poging 1: SMTP 451 4.3.0 Mailbox busy, try later",
        "poging 2: SMTP 451 4.3.0 Mailbox busy, try later",
    ]
    assert [m["X-Digipoort-Kenmerk"] for m in mta.recorder.mails] == [str(kenmerk)]


@pytest.mark.parametrize("where", ["data", "rcpt"])
async def test_5xx_reply_ends_in_410_at_once(env: Env, mta_stack: list[Mta], where: str) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    mta = await Mta(env, port).start()
    mta_stack.append(mta)
    if where == "data":
        mta.recorder.data_replies = ["554 5.7.1 Message rejected"]
    else:
        mta.recorder.rcpt_reply = "550 5.1.1 No such user"
    gw = await env.start_gateway(components=COMPONENTS)
    (kenmerk,) = await submit(gw)
    history = await env.wait_status(kenmerk, "410", recipient=BD, timeout=30)
    assert await codes(env, kenmerk) == ["405", "420", "410"]
    final = next(s for s in history if s.code == "410")
    expected = "554 5.7.1 Message rejected" if where == "data" else "550 5.1.1 No such user"
    assert final.foutcode == "AFS620" and expected in (final.details or "")
    row = await delivery(env, kenmerk)
    assert row["state"] == "failed" and row["attempts"] == 1
    assert not mta.recorder.mails


async def test_untrusted_mta_certificate_never_gets_plaintext(
    env: Env, mta_stack: list[Mta]
) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    # the MTA would accept a plain-text mail: the relay must not fall back to one
    mta = await Mta(env, port, cert="untrusted", require_starttls=False).start()
    mta_stack.append(mta)
    gw = await env.start_gateway(components=COMPONENTS)
    (kenmerk,) = await submit(gw)

    async def failed_twice() -> bool:
        return (await codes(env, kenmerk)).count("420") >= 2

    await wait_for(failed_twice, timeout=30, what="two failed attempts")
    history = await env.history(kenmerk)
    failed = [s for s in history if s.code == "420"]
    assert all("CERTIFICATE_VERIFY_FAILED" in (s.details or "") for s in failed), [
        s.details for s in failed
    ]
    assert "400" not in await codes(env, kenmerk)
    assert not mta.recorder.mails and not mta.recorder.plaintext_commands
    assert (await delivery(env, kenmerk))["state"] == "pending"


async def test_mta_without_starttls_is_a_failed_attempt(env: Env, mta_stack: list[Mta]) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    recorder = Recorder()
    controller = Controller(recorder, hostname="127.0.0.1", port=port)  # no TLS at all
    await asyncio.to_thread(controller.start)
    try:
        gw = await env.start_gateway(components=COMPONENTS)
        (kenmerk,) = await submit(gw)
        history = await env.wait_status(kenmerk, "420", recipient=BD, timeout=30)
    finally:
        await asyncio.to_thread(controller.stop)
    failed = next(s for s in history if s.code == "420")
    assert "STARTTLS" in (failed.details or "")
    assert not recorder.mails and not recorder.plaintext_commands


async def test_large_document_relayed_as_grote_berichten_reference(
    env: Env, mta_stack: list[Mta]
) -> None:
    port = free_port()
    await make_smtp_recipient(env, BD, port)
    fast_retries(env)
    env.settings.grote_berichten.threshold_bytes = 64
    mta = await Mta(env, port).start()
    mta_stack.append(mta)
    gw = await env.start_gateway(components=(*COMPONENTS, "wus"))  # wus serves downloads
    (kenmerk,) = await submit(gw)
    await env.wait_status(kenmerk, "400", recipient=BD, timeout=30)
    (attachment,) = list(mta.recorder.mails[0].iter_attachments())
    assert attachment.get_content_type() == REFERENCE_MIME_TYPE
    assert attachment.get_filename() == "bericht.xml"
    payload = attachment.get_payload(decode=True)
    assert isinstance(payload, bytes)
    ref = parse_reference(payload)
    assert ref.url.endswith(f"/grote-berichten/{kenmerk}/0")
    sample = (SAMPLES / "omzetbelasting.xml").read_bytes()
    assert ref.size == len(sample)
    # the recipient fetches the document by the reference (mutual TLS, its own certificate),
    # although the document itself is kept in PostgreSQL (below 256 KiB)
    pki = env.dir / "pki"
    tls = client_ssl_context(pki / f"{BD}.crt", pki / f"{BD}.key", pki / "ca.crt")
    url = f"https://localhost:{env.settings.wus.port}/grote-berichten/{kenmerk}/0"
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as http,
        http.get(url) as response,
    ):
        assert response.status == 200
        assert await response.read() == sample


def test_mail_headers_resist_injection() -> None:
    from datetime import UTC, datetime

    from digipoort.envelope import EnvelopeRecord, Identiteit
    from routing.aflever_body import RecipientDocument

    record = EnvelopeRecord(
        kenmerk=UUID(int=7),
        berichtsoort="Omzetbelasting",
        koppelvlak="wus",
        sender_oin=ALFA,
        berichtkenmerk="b\r\nBcc: evil@example.nl",
        belanghebbende=Identiteit(ALFA, "OIN"),
        rol_belanghebbende="Bedrijf",
        tijdstempel_aangeleverd=datetime(2026, 1, 1, tzinfo=UTC),
        stage="gerouteerd",
        aanleverkenmerk="x][V=1\r\nBcc: evil@example.nl",
    )
    doc = RecipientDocument(0, "a\r\nb.xml", "text/xml\r\nX: y", b"<a/>")
    raw = mail_bytes(
        build_relay_mail(
            record, [doc], recipient_oin=BD, to=ADDRESS, sender="gw@d.test", domain="d.test"
        )
    )
    assert b"\r\nBcc" not in raw and b"\nX: y" not in raw
    parsed = message_from_bytes(raw, policy=policy.default)
    assert parsed["Bcc"] is None and parsed["X"] is None
    assert parsed["Subject"] == f"[V={ALFA}][A={BD}][K=xV=1Bcc: evil@example.nl]"
    (att,) = list(parsed.iter_attachments())  # type: ignore[attr-defined]
    assert att.get_content_type() == "application/octet-stream"
    assert att.get_payload(decode=True) == b"<a/>"
