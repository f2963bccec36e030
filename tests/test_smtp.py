"""SMTP koppelvlak over real sockets and real TLS (smtplib), against a running gateway."""

from __future__ import annotations

import asyncio
import poplib
import smtplib
import ssl
from email import policy
from email.message import EmailMessage
from uuid import UUID

from adapters.smtp.mime import raw_mail_limit
from digipoort.pki import client_ssl_context
from tests.support import ALFA, BETA, CBS, DOUANE, HBAG, SAMPLES, Env, wait_for

COMPONENTS = ("intake", "validator", "router", "smtp", "pop3", "smtpreturns")
DOMAIN = "digipoort.test"


def mail(
    *,
    to: str = f"douane-uitvoer@{DOMAIN}",
    subject: str = f"[V={ALFA}][A={DOUANE}][K=ref-1]",
    sample: str = "omzetbelasting.xml",
    attach: bool = True,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"alfa@{DOMAIN}"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = "<m1@alfa.test>"
    msg.set_content("aanlevering\n")
    if attach:
        msg.add_attachment(
            (SAMPLES / sample).read_bytes(), maintype="text", subtype="xml", filename=sample
        )
    return msg


def tls(env: Env, name: str | None = ALFA) -> ssl.SSLContext:
    pki = env.dir / "pki"
    if name is None:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        return ctx
    return client_ssl_context(pki / f"{name}.crt", pki / f"{name}.key", pki / "ca.crt")


def send(
    env: Env, msg: EmailMessage | bytes, *, who: str | None = ALFA, rcpt: str = ""
) -> tuple[int, str]:
    """Send one mail; return the final (code, text) of the transaction."""
    with _Smtp("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.starttls(context=tls(env, who))
        smtp.ehlo()
        try:
            if isinstance(msg, bytes):
                smtp.sendmail("alfa@x", [rcpt], msg)
            else:
                smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            return code, text.decode()
        except smtplib.SMTPResponseException as exc:
            return exc.smtp_code, exc.smtp_error.decode()
        return 250, smtp.reply


class _Smtp(smtplib.SMTP):
    reply = ""

    def data(self, msg):  # type: ignore[no-untyped-def]
        code, text = super().data(msg)
        self.reply = text.decode()
        return code, text


def submit(env: Env, msg: EmailMessage, who: str = ALFA) -> UUID:
    with _Smtp("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
        smtp.starttls(context=tls(env, who))
        smtp.send_message(msg)
        reply = smtp.reply
    assert reply.startswith("2.0.0"), reply
    return UUID(reply.rsplit(" ", 1)[-1])


def pop3_messages(env: Env, oin: str = ALFA) -> list[bytes]:
    box = poplib.POP3("127.0.0.1", env.settings.pop3.port, timeout=30)
    try:
        box.stls(context=tls(env, oin))
        box.user(oin)
        box.pass_("x")
        count, _ = box.stat()
        return [b"\r\n".join(box.retr(i + 1)[1]) for i in range(count)]
    finally:
        box.quit()


async def test_douane_uitvoer_by_mail_delivered_with_return_mail(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)
    kenmerk = await asyncio.to_thread(submit, env, mail())
    await env.wait_status(kenmerk, "400", recipient=DOUANE)
    got = await env.queue_messages(DOUANE, expect=1)
    assert [m.message_id for m in got] == [str(kenmerk)]
    h = await env.history(kenmerk)
    assert [s.code for s in h][:3] == ["105", "100", "110"]

    async def return_mail() -> list[bytes] | None:
        msgs = await asyncio.to_thread(pop3_messages, env)
        return msgs or None

    msgs = await wait_for(return_mail, what="return mail in Alfa's mailbox")
    assert len(msgs) == 1
    text = msgs[0].decode()
    assert f"Subject: [V={env.settings.gateway_oin}][A={ALFA}][K=ref-1]" in text
    assert f"Kenmerk: {kenmerk}" in text and "Statuscode: 400" in text
    conn = await env.conn()
    row = await conn.fetchrow("SELECT * FROM smtp_submissions WHERE kenmerk = $1", kenmerk)
    assert row["message_id"] == "m1@alfa.test" and row["smime_signer_oin"] is None
    env_row = await conn.fetchrow("SELECT * FROM envelopes WHERE kenmerk = $1", kenmerk)
    assert env_row["koppelvlak"] == "smtp" and env_row["aanleverkenmerk"] == "ref-1"
    assert env_row["berichtkenmerk"] == "m1@alfa.test"


async def test_cbs_detailhandel_by_mail_reaches_cbs_and_hbag(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)
    msg = mail(
        to=f"cbs-detailhandel@{DOMAIN}",
        subject=f"[V={ALFA}][A=CBS][K=cbs-1][S=0]",
        sample="cbs-detailhandel.xml",
    )
    kenmerk = await asyncio.to_thread(submit, env, msg)
    await env.wait_status(kenmerk, "400", recipient=HBAG)
    await env.wait_status(kenmerk, "400", recipient=CBS)
    assert len(await env.queue_messages(CBS, expect=1, settle=0.3)) == 1
    assert len(await env.queue_messages(HBAG, expect=1, settle=0.3)) == 1


def _raw_session(env: Env, who: str | None, commands: list[str]) -> list[tuple[int, bytes]]:
    with smtplib.SMTP("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
        smtp.ehlo()
        smtp.starttls(context=tls(env, who))
        smtp.ehlo()
        return [smtp.docmd(c) for c in commands]


async def test_refusals(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)

    def no_starttls() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
            smtp.ehlo()
            assert smtp.has_extn("starttls") and smtp.has_extn("size")
            return smtp.docmd("MAIL FROM:<a@b>")

    code, text = await asyncio.to_thread(no_starttls)
    assert code == 530 and text.startswith(b"5.7.0")

    [(code, text)] = await asyncio.to_thread(_raw_session, env, None, ["MAIL FROM:<a@b>"])
    assert code == 530 and b"certificate is required" in text
    [(code, text)] = await asyncio.to_thread(_raw_session, env, "revoked", ["MAIL FROM:<a@b>"])
    assert code == 535 and b"revoked" in text
    replies = await asyncio.to_thread(
        _raw_session, env, ALFA, ["MAIL FROM:<a@b>", f"RCPT TO:<nobody@{DOMAIN}>"]
    )
    assert replies[1][0] == 550 and replies[1][1].startswith(b"5.1.1")
    replies = await asyncio.to_thread(
        _raw_session, env, BETA, ["MAIL FROM:<a@b>", f"RCPT TO:<douane-uitvoer@{DOMAIN}>"]
    )
    assert replies[1][0] == 550 and b"not authorised" in replies[1][1]

    cases: list[tuple[EmailMessage, int, bytes]] = [
        (mail(attach=False), 554, b"No attachment"),
        (mail(subject=f"[V={BETA}][K=x]"), 550, b"does not match the certificate"),
        (mail(subject="hallo"), 554, b"Subject must follow"),
    ]
    for msg, want_code, want_text in cases:
        code, text = await asyncio.to_thread(send, env, msg)
        assert (code, want_text in text.encode()) == (want_code, True), (code, text)

    # header injection: an encoded word that decodes to CR LF in the subject
    injected = (
        mail()
        .as_bytes(policy=policy.SMTP)
        .replace(
            f"[V={ALFA}][A={DOUANE}][K=ref-1]".encode(),
            b"=?utf-8?q?[V=" + ALFA.encode() + b"]=0D=0ABcc:_x@evil?=",
        )
    )
    code, text = await asyncio.to_thread(send, env, injected, rcpt=f"douane-uitvoer@{DOMAIN}")
    assert code == 554 and "Control characters" in text, (code, text)

    # a mail bomb: 1000 tiny parts
    bomb = mail()
    for i in range(1000):
        bomb.add_attachment(b"x", maintype="text", subtype="plain", filename=f"{i}.txt")
    code, text = await asyncio.to_thread(send, env, bomb)
    assert code == 554 and "Too many MIME parts" in text

    # the server keeps serving
    assert await asyncio.to_thread(submit, env, mail())


async def test_too_large_refused_by_size_and_during_data(env: Env) -> None:
    env.settings.smtp.max_message_bytes = 2 * 1024 * 1024  # the 20 MiB limit, scaled down
    await env.start_gateway(components=COMPONENTS)
    big = 21 * 1024 * 1024

    def by_size() -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
            smtp.starttls(context=tls(env))
            smtp.ehlo()
            assert int(smtp.esmtp_features["size"]) == raw_mail_limit(2 * 1024 * 1024)
            return smtp.docmd(f"MAIL FROM:<a@b> SIZE={big}")

    code, text = await asyncio.to_thread(by_size)
    assert code == 552 and text.startswith(b"5.3.4")

    def during_data() -> tuple[int, bytes]:
        line = b"A" * 998 + b"\r\n"
        with smtplib.SMTP("127.0.0.1", env.settings.smtp.port, timeout=60) as smtp:
            smtp.starttls(context=tls(env))
            smtp.ehlo()
            assert smtp.docmd("MAIL FROM:<a@b>")[0] == 250
            assert smtp.docmd(f"RCPT TO:<douane-uitvoer@{DOMAIN}>")[0] == 250
            assert smtp.docmd("DATA")[0] == 354
            assert smtp.sock is not None
            smtp.sock.sendall(b"Subject: x\r\n\r\n")
            chunk = line * 1024
            for _ in range(big // len(chunk) + 1):
                smtp.sock.sendall(chunk)
            smtp.sock.sendall(b".\r\n")
            return smtp.getreply()

    code, text = await asyncio.to_thread(during_data)
    assert code == 552 and text.startswith(b"5.3.4")


async def test_size_limit_counts_the_decoded_document(env: Env) -> None:
    """Douane-Uitvoer allows 16 MiB: a 15.25 MiB document (20.6 MiB as base64 in the
    mail, above the 20 MiB smtp.max_message_bytes) is accepted; 16.5 MiB is refused with
    552 as the document exceeds the flow's limit, not because of its encoding."""
    await env.start_gateway(components=("intake", "smtp"))

    def sized(n: int) -> EmailMessage:
        msg = mail(attach=False)
        msg.add_attachment(b"x" * n, maintype="application", subtype="xml", filename="d.xml")
        return msg

    kenmerk = await asyncio.to_thread(submit, env, sized(15 * 1024 * 1024 + 256 * 1024))
    row = await (await env.conn()).fetchrow(
        "SELECT size FROM documents WHERE kenmerk = $1 AND seq = 0", kenmerk
    )
    assert row["size"] == 15 * 1024 * 1024 + 256 * 1024
    code, text = await asyncio.to_thread(send, env, sized(16 * 1024 * 1024 + 512 * 1024))
    assert (code, text[:5]) == (552, "5.3.4"), text


def test_raw_mail_limit_is_base64_plus_headroom() -> None:
    from adapters.smtp.mime import MAIL_HEADROOM

    assert raw_mail_limit(3) == 4 + 2 + MAIL_HEADROOM
    assert raw_mail_limit(57) == 76 + 2 + MAIL_HEADROOM  # one full base64 line
    big = 20 * 1024 * 1024
    assert big * 4 // 3 < raw_mail_limit(big) - MAIL_HEADROOM < big * 4 // 3 * 1.03


async def test_concurrent_sessions_are_bounded(env: Env) -> None:
    env.settings.smtp.max_sessions = 20
    await env.start_gateway(components=COMPONENTS)
    port = env.settings.smtp.port
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(200)]
    greetings = await asyncio.gather(*(asyncio.wait_for(r.readline(), 30) for r, _ in conns))
    for _, w in conns:
        w.close()
    ok = [g for g in greetings if g.startswith(b"220")]
    busy = [g for g in greetings if g.startswith(b"421 4.3.2")]
    assert (len(ok), len(busy)) == (20, 180)

    async def served() -> UUID | None:  # the closed sessions are released
        try:
            return await asyncio.to_thread(submit, env, mail())
        except smtplib.SMTPException:
            return None

    assert await wait_for(served, what="a submission after the burst")


async def test_smime_signed_mail(env: Env) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs7

    gw = await env.start_gateway(components=COMPONENTS)
    pki = env.dir / "pki"
    cert = x509.load_pem_x509_certificates((pki / f"{ALFA}.crt").read_bytes())[0]
    key = serialization.load_pem_private_key((pki / f"{ALFA}.key").read_bytes(), None)
    inner = mail()
    for h in ("From", "To", "Subject", "Message-ID"):
        del inner[h]
    entity = inner.as_bytes().replace(b"\n", b"\r\n")
    signed = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(entity)
        .add_signer(cert, key, hashes.SHA256())  # type: ignore[arg-type]
        .sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    )
    head = (
        f"From: alfa@{DOMAIN}\r\nTo: douane-uitvoer@{DOMAIN}\r\n"
        f"Subject: [V={ALFA}][K=signed]\r\nMessage-ID: <s1@alfa.test>\r\n"
    ).encode()
    rcpt = f"douane-uitvoer@{DOMAIN}"

    class Raw(_Smtp):
        pass

    def send_raw(data: bytes) -> tuple[int, str]:
        with Raw("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
            smtp.starttls(context=tls(env))
            try:
                smtp.sendmail("a@b", [rcpt], data)
            except smtplib.SMTPResponseException as exc:
                return exc.smtp_code, exc.smtp_error.decode()
            return 250, smtp.reply

    code, reply = await asyncio.to_thread(send_raw, head + signed)
    assert code == 250, reply
    kenmerk = UUID(reply.rsplit(" ", 1)[-1])
    row = await (await env.conn()).fetchrow(
        "SELECT * FROM smtp_submissions WHERE kenmerk = $1", kenmerk
    )
    assert row["smime_signer_oin"] == ALFA and row["smime_fingerprint"]

    tampered = (head + signed).replace(b"aanlevering", b"Aanlevering", 1)
    assert tampered != head + signed
    code, reply = await asyncio.to_thread(send_raw, tampered)
    assert code == 550 and reply.startswith("5.7.7"), reply

    # the flow owner's switch: this berichtsoort now requires S/MIME
    conn = await env.conn()
    await conn.execute(
        "UPDATE berichtsoorten SET definition = jsonb_set(definition, '{smime_required}', 'true')"
        " WHERE name = 'Douane-Uitvoer'"
    )
    await conn.execute("SELECT pg_notify('digipoort_registry', 'changed')")
    assert gw.registry is not None

    async def switched() -> bool:
        return gw.registry.current.berichtsoorten["Douane-Uitvoer"].smime_required  # type: ignore[union-attr]

    await wait_for(switched, what="registry reload")
    code, reply = await asyncio.to_thread(send, env, mail())
    assert code == 550 and "requires an S/MIME" in reply
    code, reply = await asyncio.to_thread(send_raw, head + signed)
    assert code == 250, reply


async def test_submitter_of_the_cli(env: Env) -> None:
    from adapters.smtp.client import CLI

    await env.start_gateway(components=COMPONENTS)
    pki = env.dir / "pki"
    result = await asyncio.to_thread(
        CLI.submit,
        url=f"smtp://127.0.0.1:{env.settings.smtp.port}/{DOMAIN}",
        cert=pki / f"{ALFA}.crt",
        key=pki / f"{ALFA}.key",
        ca=pki / "ca.crt",
        berichtsoort="Douane-Uitvoer",
        file=SAMPLES / "omzetbelasting.xml",
        ontvanger=DOUANE,
        bijlagen=[SAMPLES / "cbs-detailhandel.xml"],
        aanleverkenmerk="cli-1",
        mime_type="text/xml",
    )
    kenmerk = UUID(result["kenmerk"])
    await env.wait_status(kenmerk, "400", recipient=DOUANE)


async def test_certificate_refusals_handshake_or_535(env: Env) -> None:
    """What docs/smtp.md says: an expired or untrusted certificate fails the STARTTLS
    handshake itself (the client sees a TLS error, the gateway logs and counts
    tls_handshake); one that verifies in TLS but is revoked (CRL) gets 535 5.7.8 at MAIL."""
    await env.start_gateway(components=COMPONENTS)
    for who in ("expired", "untrusted"):
        try:
            await asyncio.to_thread(_raw_session, env, who, ["MAIL FROM:<a@b>"])
        except (ssl.SSLError, smtplib.SMTPServerDisconnected, ConnectionError):
            continue
        raise AssertionError(f"{who}: the handshake succeeded")
    [(code, text)] = await asyncio.to_thread(_raw_session, env, "revoked", ["MAIL FROM:<a@b>"])
    assert code == 535 and text.startswith(b"5.7.8 Client certificate rejected: revoked")
