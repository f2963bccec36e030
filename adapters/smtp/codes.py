"""Every SMTP refusal: reply code, enhanced status code (RFC 3463) and text.

A refusal has a stable ``reason`` (logs, metric label ``reason``, docs/smtp.md); the
reply sent is ``<code> <enhanced> <text>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from digipoort.intake import IntakeRefused
from digipoort.registry import Weigering

__all__ = ["REFUSALS", "MailRefused", "Refusal", "intake_refusal", "protocol_refusal", "refusal"]


@dataclass(frozen=True)
class _Reply:
    code: int
    enhanced: str
    text: str


REFUSALS: Final[dict[str, _Reply]] = {
    # session / identity
    "starttls_required": _Reply(530, "5.7.0", "Must issue a STARTTLS command first"),
    "client_cert_required": _Reply(530, "5.7.0", "A client certificate is required"),
    "client_cert_rejected": _Reply(535, "5.7.8", "Client certificate rejected"),
    "busy": _Reply(421, "4.3.2", "Too many sessions, try again later"),
    "timeout": _Reply(421, "4.4.2", "Idle too long, closing connection"),
    # addressing
    "unknown_flow_address": _Reply(550, "5.1.1", "Unknown flow address"),
    "too_many_recipients": _Reply(452, "4.5.3", "One flow address per message"),
    "koppelvlak_not_allowed": _Reply(550, "5.7.1", "Flow not offered over SMTP"),
    "sender_not_authorised": _Reply(550, "5.7.1", "Sender not authorised for this flow"),
    "recipient_not_allowed": _Reply(550, "5.7.1", "Addressee not allowed for this flow"),
    "sender_unknown": _Reply(550, "5.7.1", "Sender is not a known participant"),
    # content
    "too_large": _Reply(552, "5.3.4", "Message too big"),
    "too_many_parts": _Reply(554, "5.6.0", "Too many MIME parts"),
    "too_many_attachments": _Reply(554, "5.6.0", "Too many attachments"),
    "malformed_mime": _Reply(554, "5.6.0", "Malformed MIME"),
    "header_too_large": _Reply(554, "5.6.0", "Header section too large"),
    "header_injection": _Reply(554, "5.6.0", "Control characters in a header"),
    "no_attachment": _Reply(554, "5.6.0", "No attachment: the document must be attached"),
    "bad_subject": _Reply(
        554, "5.6.0", "Subject must follow [V=<sender>][A=<addressee>][K=<reference>]"
    ),
    "sender_mismatch": _Reply(550, "5.7.1", "[V=...] does not match the certificate's OIN"),
    # S/MIME
    "smime_required": _Reply(550, "5.7.1", "This flow requires an S/MIME signed mail"),
    "smime_invalid": _Reply(550, "5.7.7", "S/MIME signature invalid"),
    "smime_signer_rejected": _Reply(550, "5.7.1", "S/MIME signer certificate rejected"),
    "smime_signer_mismatch": _Reply(550, "5.7.1", "S/MIME signer is not the sender"),
    # ours
    "unavailable": _Reply(451, "4.3.0", "Temporary failure, try again later"),
    # protocol
    "starttls_twice": _Reply(503, "5.5.1", "TLS already active"),
    "bad_mail_from": _Reply(501, "5.1.7", "Invalid sender address"),
    "auth_not_supported": _Reply(
        502, "5.5.1", "AUTH not supported: the client certificate authenticates"
    ),
    "internal_error": _Reply(451, "4.3.0", "Temporary failure, try again later"),
}

_INTAKE: Final[dict[str, str]] = {
    Weigering.BERICHTSOORT_ONBEKEND.value: "unknown_flow_address",
    Weigering.KOPPELVLAK_NIET_TOEGESTAAN.value: "koppelvlak_not_allowed",
    Weigering.AFZENDER_ONBEKEND.value: "sender_unknown",
    Weigering.AFZENDER_NIET_GEAUTORISEERD.value: "sender_not_authorised",
    Weigering.ONTVANGER_NIET_TOEGESTAAN.value: "recipient_not_allowed",
    IntakeRefused.TE_GROOT: "too_large",
    IntakeRefused.TE_VEEL_BIJLAGEN: "too_many_attachments",
}


class MailRefused(Exception):
    """Refuse the command or message. ``reason`` is a key of :data:`REFUSALS`; ``detail``
    (safe to show: never contains secrets) is appended to the reply text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REFUSALS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail

    @property
    def code(self) -> int:
        return REFUSALS[self.reason].code

    def reply(self) -> str:
        r = REFUSALS[self.reason]
        text = f"{r.text}: {self.detail}" if self.detail else r.text
        # one line, printable: the detail may quote client input
        text = "".join(c if c.isprintable() else "?" for c in text)[:400]
        return f"{r.code} {r.enhanced} {text}"


def refusal(reason: str, detail: str = "") -> MailRefused:
    return MailRefused(reason, detail)


def intake_refusal(exc: IntakeRefused) -> MailRefused:
    return MailRefused(_INTAKE.get(exc.reden, "sender_not_authorised"), exc.melding)


class Refusal(str):
    """A reply string that was already logged and counted (a :class:`MailRefused`
    answered by the handler). aiosmtpd pushes it unchanged, so the protocol layer can
    tell it from aiosmtpd's own replies."""

    __slots__ = ()


# aiosmtpd's own refusals (prefix of its reply) -> our reason and the reply we send:
# enhanced status codes (RFC 3463), no echoed input, no exception class names.
_PROTOCOL: Final[tuple[tuple[str, str, str | None], ...]] = (
    ("500 Command line too long", "line_too_long", "500 5.5.2 Command line too long"),
    ("500 Line too long", "line_too_long", "500 5.5.2 Line too long"),
    ("500 Error: bad syntax", "syntax", "500 5.5.2 Syntax error"),
    ("500 Error: strict ASCII mode", "non_ascii", "500 5.5.2 Non-ASCII characters"),
    ("500 Error: command", "unknown_command", "500 5.5.1 Command not recognized"),
    ("500 Error: (", "internal_error", "451 4.3.0 Temporary failure, try again later"),
    ("500 Error: Cannot describe", "internal_error", "451 4.3.0 Temporary failure"),
    ("554 Command refused", "tls_refused", "554 5.7.0 Command refused: TLS failed"),
    ("530 Must issue a STARTTLS", "starttls_required", None),
    ("421 4.7.0", "too_many_commands", None),
    ("502 5.5.1 Too many unrecognized", "too_many_unknown_commands", None),
    ("503 Error: send", "sequence", "503 5.5.1 Send EHLO first"),
    ("503 Error: nested MAIL", "sequence", "503 5.5.1 Nested MAIL command"),
    ("503 Error: need MAIL", "sequence", "503 5.5.1 Need MAIL command"),
    ("503 Error: need RCPT", "sequence", "503 5.5.1 Need RCPT command"),
    ("501 Syntax:", "syntax", None),
    ("501 Error:", "syntax", None),
    ("553 5.1.3", "bad_address", "553 5.1.3 Malformed address"),
    ("555 ", "bad_parameters", None),
    ("552 Error: message size", "too_large", None),
    ("552 Error: Too much mail data", "too_large", None),
    ("502 ", "not_implemented", None),
)
_ENHANCED: Final[dict[str, str]] = {"500": "5.5.2", "501": "5.5.4", "502": "5.5.1",
                                    "503": "5.5.1", "552": "5.3.4", "555": "5.5.4"}  # fmt: skip


def protocol_refusal(status: str) -> tuple[str, str] | None:
    """aiosmtpd's own reply ``status`` -> (reason, the reply to send), or None when it
    is not a refusal (2xx/3xx) or is already one of ours (:class:`Refusal`)."""
    if isinstance(status, Refusal) or status[:1] not in ("4", "5"):
        return None
    reason, replacement = f"smtp_{status[:3]}", None
    for prefix, known, text in _PROTOCOL:
        if status.startswith(prefix):
            reason, replacement = known, text
            break
    if replacement is None:
        replacement = MailRefused(reason).reply() if reason in REFUSALS else _with_enhanced(status)
    return reason, replacement


def _with_enhanced(status: str) -> str:
    code, _, text = status.partition(" ")
    if len(text) > 6 and text[1] == "." and text[0] in "245":
        return status  # already carries an enhanced status code
    enhanced = _ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code} {enhanced} {text}"
