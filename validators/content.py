"""Content checks before any parsing: size and MIME type, as pure functions.

A :class:`Violation` is one reason a document is refused (status 311, foutcode VAS500);
the validation stage joins them into the status details, so messages are written for the
sender (in Dutch, like the rest of the status details), codes for machines.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

__all__ = ["Violation", "check_mime", "check_size", "looks_like_xml", "normalise_mime"]

# RFC 2045 / RFC 6838 token characters for type and subtype.
_MIME_TYPE: Final = re.compile(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+|\*/\*|[a-z0-9!#$&^_.+-]+/\*")
_XML_TYPES: Final = frozenset({"application/xml", "text/xml"})


@dataclass(frozen=True)
class Violation:
    """One reason a document is refused.

    ``code``: ``too_large``, ``mime``, ``malformed``, ``dtd_forbidden``, ``too_deep``,
    ``too_many_elements`` or ``schema``; ``line`` is 1-based where known.
    """

    code: str
    message: str
    line: int | None = None


def check_size(size: int, limit: int) -> Violation | None:
    """``None`` if ``size`` bytes fit in ``limit`` bytes, else a ``too_large`` violation."""
    if size > limit:
        return Violation("too_large", f"{size} bytes, maximaal {limit} bytes toegestaan")
    return None


def normalise_mime(mime_type: str) -> str:
    """``'Text/XML; charset=UTF-8'`` → ``'text/xml'``: parameters dropped, lower case."""
    return mime_type.split(";", 1)[0].strip().lower()


def check_mime(mime_type: str, allowed: Sequence[str]) -> Violation | None:
    """``None`` if ``mime_type`` is one of ``allowed``, else a ``mime`` violation.

    Case and parameters are ignored on both sides (``text/xml; charset=utf-8`` matches
    ``text/xml``). An allowed entry may be a wildcard: ``application/*`` or ``*/*``.
    """
    given = normalise_mime(mime_type)
    if not _MIME_TYPE.fullmatch(given) or "*" in given:
        return Violation("mime", f"MIME-type {mime_type!r} is geen geldig MIME-type")
    kind = given.split("/", 1)[0]
    for entry in allowed:
        wanted = normalise_mime(entry)
        if wanted in (given, "*/*", f"{kind}/*"):
            return None
    toegestaan = ", ".join(allowed) if allowed else "geen"
    return Violation(
        "mime", f"MIME-type {mime_type!r} is niet toegestaan (toegestaan: {toegestaan})"
    )


def looks_like_xml(mime_type: str) -> bool:
    """True for ``application/xml``, ``text/xml`` and any ``*/*+xml`` (e.g. soap+xml)."""
    given = normalise_mime(mime_type)
    return given in _XML_TYPES or (bool(_MIME_TYPE.fullmatch(given)) and given.endswith("+xml"))
