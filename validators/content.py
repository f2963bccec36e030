"""Content checks: size and MIME type, as pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    code: str
    message: str
    line: int | None = None


def check_size(size: int, limit: int) -> Violation | None:
    if size > limit:
        return Violation("too_large", f"{size} bytes, maximaal {limit}")
    return None


def normalise_mime(mime_type: str) -> str:
    return mime_type.split(";", 1)[0].strip().lower()


def check_mime(mime_type: str, allowed: Sequence[str]) -> Violation | None:
    if normalise_mime(mime_type) in {normalise_mime(a) for a in allowed}:
        return None
    return Violation("mime", f"MIME-type {mime_type!r} niet toegestaan (toegestaan: {', '.join(allowed)})")


def looks_like_xml(mime_type: str) -> bool:
    m = normalise_mime(mime_type)
    return m in ("application/xml", "text/xml") or m.endswith("+xml")
