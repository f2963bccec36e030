"""Mail → envelope fields, as a pure function of the message bytes (fuzzable, no I/O).

:func:`parse_mail` returns a :class:`ParsedMail` or raises
:class:`~adapters.smtp.codes.MailRefused`. The first attachment is the document
(berichtInhoud), further attachments are bijlagen; text bodies without a file name are
ignored. An S/MIME ``multipart/signed`` mail yields the exact signed bytes and the
detached signature for :mod:`adapters.smtp.smime`.

Bounds: the top-level header section (``max_header_bytes``), the number of MIME parts
(``max_parts``, enforced while parsing: the parser stops creating parts at the limit),
the nesting depth, and control characters in headers (header injection).
"""

from __future__ import annotations

import email.errors
import re
from dataclasses import dataclass
from email import policy
from email.feedparser import BytesFeedParser
from email.message import EmailMessage, Message
from typing import Any

from adapters.smtp.codes import MailRefused
from adapters.smtp.subject import SubjectFields, parse_subject

__all__ = [
    "Attachment",
    "ParsedMail",
    "SignedPart",
    "parse_mail",
    "raw_mail_limit",
    "safe_filename",
]

MAX_HEADER_BYTES = 64 * 1024
MAX_DEPTH = 8
_MAX_FILENAME = 80
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BARE_CR = re.compile(rb"\r(?!\n)|\x00")
_SIGNATURE_TYPES = frozenset({"application/pkcs7-signature", "application/x-pkcs7-signature"})
_OPAQUE_TYPES = frozenset({"application/pkcs7-mime", "application/x-pkcs7-mime"})
# the defects that make a mail unusable, with the text the sender sees (never a class name)
_FATAL_DEFECTS: dict[type[email.errors.MessageDefect], str] = {
    email.errors.NoBoundaryInMultipartDefect: "multipart without boundary",
    email.errors.StartBoundaryNotFoundDefect: "multipart boundary not found",
    email.errors.MultipartInvariantViolationDefect: "inconsistent multipart",
    email.errors.InvalidMultipartContentTransferEncodingDefect: "encoded multipart",
    email.errors.InvalidBase64CharactersDefect: "invalid base64 characters",
    email.errors.InvalidBase64LengthDefect: "invalid base64 length",
    email.errors.MissingHeaderBodySeparatorDefect: "no blank line after the header",
}


@dataclass(frozen=True)
class Attachment:
    mime_type: str
    bestandsnaam: str
    content: bytes


@dataclass(frozen=True)
class SignedPart:
    """An S/MIME detached signature and the exact (canonical CRLF) bytes it covers."""

    signed_bytes: bytes
    signature_der: bytes


@dataclass(frozen=True)
class ParsedMail:
    subject: SubjectFields
    message_id: str | None
    attachments: tuple[Attachment, ...]
    signed: SignedPart | None = None

    @property
    def inhoud(self) -> Attachment:
        return self.attachments[0]

    @property
    def bijlagen(self) -> tuple[Attachment, ...]:
        return self.attachments[1:]


#: room for the header section, text parts and MIME structure around the attachments
MAIL_HEADROOM = 1024 * 1024


def raw_mail_limit(max_decoded: int) -> int:
    """The size a mail may have on the wire when its attachments may hold ``max_decoded``
    bytes: base64 makes 4 octets of every 3 and adds CRLF after every 76 (RFC 2045), plus
    :data:`MAIL_HEADROOM`. The decoded documents are then checked against the flow."""
    encoded = -(-max_decoded // 3) * 4
    return encoded + -(-encoded // 76) * 2 + MAIL_HEADROOM


class _PartLimit(Exception):
    pass


def _counting_factory(limit: int) -> Any:
    count = {"n": -1}  # BytesFeedParser calls the factory once while probing its signature

    def factory(policy: policy.Policy = policy.default) -> EmailMessage:
        count["n"] += 1
        if count["n"] > limit:
            raise _PartLimit
        return EmailMessage(policy=policy)

    return factory


def parse_mail(
    data: bytes, *, max_parts: int = 100, max_header_bytes: int = MAX_HEADER_BYTES
) -> ParsedMail:
    """Parse a submitted mail. Raises MailRefused with a precise reason."""
    end = _HEADER_END.search(data, 0, max_header_bytes + 4)
    header_len = end.start() if end else len(data)
    if header_len > max_header_bytes:
        raise MailRefused("header_too_large", f"more than {max_header_bytes} bytes")
    if _BARE_CR.search(data, 0, header_len):
        raise MailRefused("header_injection", "bare CR or NUL in the header section")
    parser = BytesFeedParser(_factory=_counting_factory(max_parts), policy=policy.default)
    try:
        parser.feed(data)
        msg = parser.close()
    except _PartLimit:
        raise MailRefused("too_many_parts", f"more than {max_parts}") from None
    except Exception:  # the stdlib parser is lenient; anything else is malformed
        raise MailRefused("malformed_mime", "unparseable") from None
    try:
        return _interpret(data, msg)
    except MailRefused:
        raise
    except (RecursionError, _PartLimit):
        raise MailRefused("too_many_parts", "nested too deeply") from None
    except Exception:
        raise MailRefused("malformed_mime", "unparseable") from None


def _single_header(msg: Message, name: str) -> str | None:
    values = msg.get_all(name) or []
    if len(values) > 1:
        raise MailRefused(
            "bad_subject" if name == "Subject" else "malformed_mime",
            f"{name} given {len(values)} times",
        )
    if not values:
        return None
    return str(values[0])


def _message_id(msg: Message) -> str | None:
    raw = _single_header(msg, "Message-ID")
    if raw is None:
        return None
    value = raw.strip()
    if any(not (0x20 < ord(c) < 0x7F) for c in value):
        raise MailRefused("header_injection", "Message-ID")
    value = value.removeprefix("<").removesuffix(">")
    return value[:255] or None


def _interpret(data: bytes, msg: Message) -> ParsedMail:
    _check_defects(msg)
    subject_text = _single_header(msg, "Subject")
    if subject_text is None:
        raise MailRefused("bad_subject", "no Subject")
    subject = parse_subject(subject_text)
    message_id = _message_id(msg)
    content_type = msg.get_content_type()
    if content_type in _OPAQUE_TYPES:
        raise MailRefused("malformed_mime", "opaque S/MIME (application/pkcs7-mime) not supported")
    signed: SignedPart | None = None
    content_root = msg
    if content_type == "multipart/signed":
        signed, content_root = _signed(data, msg)
    attachments = _attachments(content_root)
    if not attachments:
        raise MailRefused("no_attachment")
    return ParsedMail(subject, message_id, tuple(attachments), signed)


def _check_defects(part: Message) -> None:
    for defect in part.defects:
        for kind, text in _FATAL_DEFECTS.items():
            if isinstance(defect, kind):
                raise MailRefused("malformed_mime", text)


def _signed(data: bytes, msg: Message) -> tuple[SignedPart, Message]:
    protocol = str(msg.get_param("protocol", "") or "").lower()
    if protocol not in _SIGNATURE_TYPES:
        raise MailRefused("malformed_mime", "multipart/signed without a pkcs7 protocol")
    parts = msg.get_payload()
    if not isinstance(parts, list) or len(parts) != 2:
        raise MailRefused("malformed_mime", "multipart/signed must have two parts")
    content, signature = parts
    if not isinstance(content, Message) or not isinstance(signature, Message):
        raise MailRefused("malformed_mime", "multipart/signed parts")
    if signature.get_content_type() not in _SIGNATURE_TYPES:
        raise MailRefused("malformed_mime", "second part is not a pkcs7 signature")
    signature_der = signature.get_payload(decode=True)
    _check_defects(signature)
    boundary = msg.get_boundary()
    if not isinstance(signature_der, bytes) or not signature_der or not boundary:
        raise MailRefused("malformed_mime", "empty signature")
    signed_bytes = signed_entity(data, boundary.encode("ascii", "replace"))
    return SignedPart(signed_bytes, signature_der), content


def signed_entity(data: bytes, boundary: bytes) -> bytes:
    """The first body part of a multipart entity, exactly as sent, CRLF-canonical."""
    end = _HEADER_END.search(data)
    if end is None:
        raise MailRefused("malformed_mime", "no body")
    body = data[end.end() :]
    b = re.escape(boundary)
    first = re.compile(rb"(?:\A|\n)--" + b + rb"[ \t]*\r?\n").search(body)
    if first is None:
        raise MailRefused("malformed_mime", "signed part not found")
    start = first.end()
    nxt = re.compile(rb"\r?\n--" + b + rb"(?:--)?[ \t]*(?:\r?\n|\Z)").search(body, start)
    if nxt is None:
        raise MailRefused("malformed_mime", "signed part not terminated")
    return re.sub(rb"(?<!\r)\n", b"\r\n", body[start : nxt.start()])


def _attachments(root: Message) -> list[Attachment]:
    found: list[Attachment] = []
    stack: list[tuple[Message, int]] = [(root, 0)]
    while stack:
        part, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MailRefused("too_many_parts", f"nested deeper than {MAX_DEPTH}")
        _check_defects(part)
        if part.is_multipart():
            children = part.get_payload()
            assert isinstance(children, list)
            stack.extend(
                (child, depth + 1) for child in reversed(children) if isinstance(child, Message)
            )
            continue
        if part.get_content_type() == "message/rfc822":
            continue  # forwarded mails are not documents
        filename = part.get_filename()
        disposition = part.get_content_disposition()
        if filename is None and disposition != "attachment":
            continue  # body text
        content = part.get_payload(decode=True)
        _check_defects(part)
        if not isinstance(content, bytes):
            raise MailRefused("malformed_mime", "attachment without content")
        found.append(
            Attachment(
                part.get_content_type()[:255],
                safe_filename(filename, len(found) + 1),
                content,
            )
        )
    return found


def safe_filename(name: str | None, n: int) -> str:
    """A file name without directories or control characters, at most 80 characters."""
    text = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c.isprintable()).strip().lstrip(".")
    if not text:
        return f"bijlage-{n}"
    if len(text) > _MAX_FILENAME:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10:
            text = stem[: _MAX_FILENAME - len(ext) - 1] + "." + ext
        else:
            text = text[:_MAX_FILENAME]
    return text
