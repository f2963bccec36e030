"""A mail client for the SMTP koppelvlak (``digipoort submit --via smtp``): STARTTLS with
the participant's client certificate, the document as attachment, the subject
convention; returns the kenmerk from the 250 reply."""

from __future__ import annotations

import mimetypes
import re
import smtplib
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from adapters.smtp.subject import format_subject
from digipoort.clienterrors import CertificateRefused, ClientError, diagnose
from digipoort.pki import certificate_file_oin, client_ssl_context

__all__ = ["CLI", "SmtpSubmitError", "build_mail", "submit_mail"]

_KENMERK = re.compile(r"kenmerk ([0-9a-f-]{36})")


class SmtpSubmitError(ClientError):
    """The server refused (``foutcode`` = its SMTP reply code), or the submission failed
    before the server answered (code 0: no foutcode)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}" if code else message)
        self.foutcode = str(code) if code else None


def build_mail(
    *,
    sender_oin: str,
    to: str,
    file: Path,
    mime_type: str,
    ontvanger: str | None,
    aanleverkenmerk: str | None,
    bijlagen: Sequence[Path] = (),
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"{sender_oin}@{to.rpartition('@')[2]}"
    msg["To"] = to
    msg["Subject"] = format_subject(sender_oin, ontvanger or "", aanleverkenmerk)
    msg["Message-ID"] = make_msgid(domain="digipoort.client")
    msg.set_content("Aanlevering via Digipoort (SMTP).\n")
    maintype, _, subtype = mime_type.partition("/")
    msg.add_attachment(file.read_bytes(), maintype=maintype, subtype=subtype, filename=file.name)
    for path in bijlagen:
        guessed = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        bm, _, bs = guessed.partition("/")
        msg.add_attachment(path.read_bytes(), maintype=bm, subtype=bs, filename=path.name)
    return msg


class _Smtp(smtplib.SMTP):
    """smtplib that keeps the DATA reply (which carries the kenmerk)."""

    last_data_reply: str = ""

    def data(self, msg: Any) -> tuple[int, bytes]:
        code, text = super().data(msg)
        self.last_data_reply = text.decode(errors="replace")
        return code, text


def submit_mail(
    msg: EmailMessage, *, host: str, port: int, cert: Path, key: Path, ca: Path, timeout: float = 60
) -> str:
    """Send over STARTTLS with the client certificate; return the kenmerk."""
    context = client_ssl_context(cert, key, ca)
    try:
        smtp = _Smtp(host, port, timeout=timeout)
    except OSError as exc:
        raise SmtpSubmitError(
            0, f"cannot reach the gateway at {host}:{port}: {exc.strerror or exc}"
        ) from exc
    with smtp:
        try:
            smtp.ehlo()
            smtp.starttls(context=context)
            smtp.ehlo()
        except (OSError, smtplib.SMTPException) as exc:
            refused = diagnose(exc, cert, ca)
            if refused is not None:
                raise refused from exc
            raise
        try:
            smtp.send_message(msg)
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
            text = text if isinstance(text, bytes) else str(text).encode()
            raise SmtpSubmitError(code, text.decode(errors="replace")) from None
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            shown = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
            if exc.smtp_code == 535 and "certificate" in shown.lower():
                raise CertificateRefused(
                    f"the gateway refused the certificate {cert.name}: {exc.smtp_code} {shown}"
                ) from None
            raise SmtpSubmitError(exc.smtp_code, shown) from None
        except (OSError, smtplib.SMTPServerDisconnected) as exc:
            refused = diagnose(exc, cert, ca)  # TLS 1.3: the refusal comes with MAIL
            if refused is not None:
                raise refused from exc
            raise
        found = _KENMERK.search(smtp.last_data_reply)
    if found is None:
        raise SmtpSubmitError(250, f"no kenmerk in the reply: {smtp.last_data_reply}")
    return found.group(1)


def _endpoint(url: str) -> tuple[str, int, str]:
    """``smtp://host:port[/domain]``; anything else (e.g. the WUS URL the CLI passes by
    default) means the local default ``127.0.0.1:8587``, domain ``digipoort.test``."""
    parts = urlsplit(url)
    if parts.scheme != "smtp":
        return "127.0.0.1", 8587, "digipoort.test"
    return (
        parts.hostname or "127.0.0.1",
        parts.port or 8587,
        parts.path.strip("/") or ("digipoort.test"),
    )


class _Cli:
    """What ``digipoort submit --via smtp`` calls (entry point ``digipoort.submitters``)."""

    def submit(
        self,
        *,
        url: str,
        cert: Path,
        key: Path,
        ca: Path,
        berichtsoort: str,
        file: Path,
        ontvanger: str | None,
        bijlagen: Sequence[Path],
        aanleverkenmerk: str | None,
        mime_type: str,
    ) -> dict[str, Any]:
        try:
            oin = certificate_file_oin(cert)
        except ValueError as exc:
            raise SmtpSubmitError(0, str(exc)) from None
        host, port, domain = _endpoint(url)
        msg = build_mail(
            sender_oin=oin,
            to=f"{berichtsoort.lower()}@{domain}",
            file=file,
            mime_type=mime_type,
            ontvanger=ontvanger,
            aanleverkenmerk=aanleverkenmerk,
            bijlagen=bijlagen,
        )
        kenmerk = submit_mail(msg, host=host, port=port, cert=cert, key=key, ca=ca)
        return {"kenmerk": kenmerk, "berichtsoort": berichtsoort, "message_id": msg["Message-ID"]}


CLI = _Cli()
