"""Digikoppeling Grote Berichten: the reference document and HTTP Range parsing (pure).

A document larger than ``grote_berichten.threshold_bytes`` does not travel inside the
``afleverRequest``: ``berichtInhoud`` (or the ``bijlage``) then carries this reference
document instead, with ``mimeType`` :data:`REFERENCE_MIME_TYPE`; the original MIME type
is in ``content/@contentType``. The recipient fetches the bytes over mutual-TLS HTTPS
from ``transport/location/senderUrl``, with byte ranges to resume, and checks size and
SHA-256 (Digikoppeling's errors CHECKSUM_ERROR / INCORRECT_FILE_SIZE if they differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from lxml import etree

from digipoort.xmlsafe import XmlLimits, parse

GB_NS = "http://www.logius.nl/digikoppeling/gb/2010/10"
REFERENCE_MIME_TYPE = "application/x-digikoppeling-gb+xml"
_G = "{%s}" % GB_NS  # noqa: UP031


@dataclass(frozen=True)
class Reference:
    context_id: str
    url: str
    filename: str
    content_type: str
    size: int
    sha256: str
    creation_time: datetime
    expiration_time: datetime


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="seconds").replace("+00:00", "Z")


def build_reference(ref: Reference) -> bytes:
    root = etree.Element(
        _G + "digikoppeling-external-data-references",
        nsmap={"gb": GB_NS},  # type: ignore[dict-item]
        profile="digikoppeling-gb-4.0",
    )
    data = etree.SubElement(root, _G + "data-reference", contextId=ref.context_id)
    lifetime = etree.SubElement(data, _G + "lifetime")
    etree.SubElement(lifetime, _G + "creationTime").text = _iso(ref.creation_time)
    etree.SubElement(lifetime, _G + "expirationTime").text = _iso(ref.expiration_time)
    content = etree.SubElement(data, _G + "content", contentType=ref.content_type)
    etree.SubElement(content, _G + "filename").text = ref.filename
    etree.SubElement(content, _G + "checksum", type="SHA-256").text = ref.sha256
    etree.SubElement(content, _G + "size").text = str(ref.size)
    transport = etree.SubElement(data, _G + "transport")
    location = etree.SubElement(transport, _G + "location")
    etree.SubElement(location, _G + "senderUrl", type="xs:anyURI").text = ref.url
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


class InvalidReference(ValueError):
    """Not a valid Grote Berichten reference document."""


def parse_reference(data: bytes) -> Reference:
    try:
        root = parse(data, XmlLimits(max_bytes=64 * 1024, max_depth=16)).getroot()
    except Exception as exc:
        raise InvalidReference(f"not a reference document: {exc}") from None
    ref = root.find(f"{_G}data-reference")
    if root.tag != _G + "digikoppeling-external-data-references" or ref is None:
        raise InvalidReference("not a Grote Berichten reference")

    def text(path: str) -> str:
        value = ref.findtext(path)
        if value is None or not value.strip():
            raise InvalidReference(f"reference lacks {path}")
        return value.strip()

    content = ref.find(f"{_G}content")
    try:
        size = int(text(f"{_G}content/{_G}size"))
        created = datetime.fromisoformat(text(f"{_G}lifetime/{_G}creationTime"))
        expires = datetime.fromisoformat(text(f"{_G}lifetime/{_G}expirationTime"))
    except ValueError as exc:
        raise InvalidReference(str(exc)) from None
    sha = text(f"{_G}content/{_G}checksum").lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha) or size < 0:
        raise InvalidReference("bad checksum or size")
    return Reference(
        context_id=ref.get("contextId", ""),
        url=text(f"{_G}transport/{_G}location/{_G}senderUrl"),
        filename=text(f"{_G}content/{_G}filename"),
        content_type=(content.get("contentType") if content is not None else None)
        or "application/octet-stream",
        size=size,
        sha256=sha,
        creation_time=created,
        expiration_time=expires,
    )


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """One byte range of ``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` as (start, end_exclusive);
    None for no Range header. Anything malformed, multiple or overlapping ranges, negative
    or past-the-end positions raise :class:`RangeNotSatisfiable` (416)."""
    if header is None:
        return None
    value = header.strip()
    if not value.startswith("bytes=") or len(value) > 200:
        raise RangeNotSatisfiable("unsupported range unit")
    spec = value[len("bytes=") :].strip()
    if "," in spec:
        raise RangeNotSatisfiable("multiple ranges are not supported")
    first, sep, last = spec.partition("-")
    if not sep:
        raise RangeNotSatisfiable("malformed range")
    first, last = first.strip(), last.strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() then refuses
    digits = (first + last).isascii() and all(p.isdigit() for p in (first, last) if p)
    if not digits or not (first or last):
        raise RangeNotSatisfiable("malformed range")
    if not first:  # suffix: the last n bytes
        n = int(last)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - n), size
    start = int(first)
    end = int(last) + 1 if last else size
    if start >= size or end <= start:
        raise RangeNotSatisfiable("range outside the content")
    return start, min(end, size)
