"""The subject convention of the SMTP koppelvlak: ``[V=<sender>][A=<addressee>][K=<ref>]``
with an optional ``[S=...]``; replies swap V and A. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.smtp.codes import MailRefused

__all__ = ["SubjectFields", "format_subject", "parse_subject"]

_FIELD = re.compile(r"\[([A-Za-z])=([^\[\]]*)\]")
_LOOKS_LIKE_FIELD = re.compile(r"\[[A-Za-z]=")
_MAX_SUBJECT = 998
_MAX_FIELD = 80
_MAX_K = 40  # K is the aanleverkenmerk: at most 40 (koppelvlak XSD)
_KNOWN = frozenset("VAKS")


@dataclass(frozen=True)
class SubjectFields:
    v: str | None = None  # sender (afzender)
    a: str | None = None  # addressee (OIN or process id)
    k: str | None = None  # the sender's reference: aanleverkenmerk
    s: str | None = None


def _clean(value: str) -> str:
    return value.strip()


def parse_subject(subject: str) -> SubjectFields:
    """Parse the fields; raise MailRefused(header_injection | bad_subject)."""
    if any((ord(c) < 0x20 and c != "\t") or c == "\x7f" for c in subject):
        raise MailRefused("header_injection", "control characters in Subject")
    if len(subject) > _MAX_SUBJECT:
        raise MailRefused("bad_subject", "subject too long")
    text = subject.strip()
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _FIELD.match(text, pos)
        if m is None:
            # trailing free text after the fields is allowed, but not text that starts
            # like a field ("[K=" without its "]"): that field would be lost silently
            if fields and not _LOOKS_LIKE_FIELD.match(text, pos):
                break
            raise MailRefused("bad_subject")
        key = m.group(1).upper()
        if key in fields:
            raise MailRefused("bad_subject", f"field {key} given twice")
        limit = _MAX_K if key == "K" else _MAX_FIELD
        if len(m.group(2).strip()) > limit:
            raise MailRefused("bad_subject", f"[{key}=...] longer than {limit} characters")
        if key in _KNOWN:
            fields[key] = _clean(m.group(2))
        pos = m.end()
        while pos < len(text) and text[pos] == " ":
            pos += 1
    if not fields.get("V"):
        raise MailRefused("bad_subject", "[V=<sender OIN>] is required")
    k = fields.get("K") or None
    return SubjectFields(v=fields["V"], a=fields.get("A") or None, k=k, s=fields.get("S") or None)


def format_subject(v: str, a: str, k: str | None, s: str | None = None) -> str:
    def safe(x: str) -> str:
        return re.sub(r"[\[\]\x00-\x1f\x7f]", "", x)

    text = f"[V={safe(v)}][A={safe(a)}][K={safe(k or '')}]"
    return text + (f"[S={safe(s)}]" if s else "")
