"""The koppelvlak 1.2 request and response documents (Body payloads), as pure functions.

Parsing follows the koppelvlak XSD: element order, cardinality, the documented maximum
lengths (after xs:normalizedString "collapse"), xs:dateTime, strict base64. Anything else
raises :class:`RequestInvalid` (mapped to ALS100/STS100). Nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from lxml import etree

from digipoort.envelope import Document, Identiteit
from digipoort.status import Status
from digipoort.wus.soap import KOPPELVLAK_NS

__all__ = [
    "INHOUD_MAX_BYTES",
    "AanleverVerzoek",
    "InhoudTooLarge",
    "Proces",
    "RequestInvalid",
    "StatusRegel",
    "StatusVraag",
    "aanlever_response",
    "berichtsoorten_response",
    "format_datetime",
    "parse_aanlever_request",
    "parse_status_request",
    "processen_response",
    "statussen_response",
]

KV: Final = f"{{{KOPPELVLAK_NS}}}"
#: xs:maxLength of berichtInhoudType/inhoud (decoded octets).
INHOUD_MAX_BYTES: Final = 20_971_520

_WS = re.compile(r"[ \t\r\n]+")
_B64_WS = re.compile(rb"[ \t\r\n]+")
_DATETIME = re.compile(r"-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?")


class RequestInvalid(Exception):
    """The Body payload does not meet the koppelvlak XSD."""


class InhoudTooLarge(RequestInvalid):
    """A berichtInhoud or bijlage above the 20 MiB limit (a distinct refusal)."""


# --------------------------------------------------------------------------- helpers


def _children(parent: etree._Element) -> list[etree._Element]:
    return [c for c in parent if isinstance(c.tag, str)]


def _local(element: etree._Element) -> str:
    qname = etree.QName(element)
    if qname.namespace != KOPPELVLAK_NS:
        raise RequestInvalid(f"element {qname.localname} is not in the koppelvlak namespace")
    return qname.localname


class _Cursor:
    """Walks the element children of a sequence in XSD order."""

    def __init__(self, parent: etree._Element) -> None:
        self._items = _children(parent)
        self._pos = 0
        self._parent = etree.QName(parent).localname
        if (parent.text or "").strip() or any((c.tail or "").strip() for c in parent):
            raise RequestInvalid(f"unexpected text in {self._parent}")

    def take(self, name: str, *, required: bool) -> etree._Element | None:
        if self._pos < len(self._items) and _local(self._items[self._pos]) == name:
            self._pos += 1
            return self._items[self._pos - 1]
        if required:
            raise RequestInvalid(f"{self._parent}: {name} missing or out of order")
        return None

    def take_all(self, name: str) -> list[etree._Element]:
        found: list[etree._Element] = []
        while (element := self.take(name, required=False)) is not None:
            found.append(element)
        return found

    def done(self) -> None:
        if self._pos != len(self._items):
            extra = _local(self._items[self._pos])
            raise RequestInvalid(f"{self._parent}: unexpected element {extra}")


def _text(element: etree._Element, max_length: int) -> str:
    if _children(element):
        raise RequestInvalid(f"{etree.QName(element).localname} must be text")
    value = _WS.sub(" ", element.text or "").strip()
    if len(value) > max_length:
        raise RequestInvalid(
            f"{etree.QName(element).localname} longer than {max_length} characters"
        )
    return value


def _opt_text(cursor: _Cursor, name: str, max_length: int) -> str | None:
    element = cursor.take(name, required=False)
    return None if element is None else _text(element, max_length)


def _req_text(cursor: _Cursor, name: str, max_length: int) -> str:
    element = cursor.take(name, required=True)
    assert element is not None
    value = _text(element, max_length)
    if not value:
        raise RequestInvalid(f"{name} is empty")
    return value


def _identiteit(element: etree._Element) -> Identiteit:
    cursor = _Cursor(element)
    nummer = _req_text(cursor, "nummer", 35)
    soort = _req_text(cursor, "type", 20)
    cursor.done()
    return Identiteit(nummer, soort)


def _datetime(element: etree._Element | None) -> datetime | None:
    if element is None:
        return None
    value = _text(element, 64)
    if not _DATETIME.fullmatch(value):
        raise RequestInvalid(f"{etree.QName(element).localname} is not an xs:dateTime")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise RequestInvalid(f"{etree.QName(element).localname} is not a valid date") from None
    try:  # 0001-01-01T00:00:00+14:00 is a valid xs:dateTime, but before year 1 in UTC
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise RequestInvalid(
            f"{etree.QName(element).localname} valt buiten 0001-01-01..9999-12-31 (UTC)"
        ) from None


def strict_b64decode(raw: bytes) -> bytes:
    """Decode xs:base64Binary without whitespace, canonical only: complete 4-character
    groups, padding only at the end, zero padding bits (``QR==`` and ``QUJD=`` are
    refused). ValueError otherwise."""
    try:
        content = base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError(str(exc)) from None
    if base64.b64encode(content) != raw:  # the only encoding of ``content``
        raise ValueError("non-canonical base64")
    return content


def _document(element: etree._Element) -> Document:
    cursor = _Cursor(element)
    mime_type = _req_text(cursor, "mimeType", 255)
    bestandsnaam = _req_text(cursor, "bestandsnaam", 80)
    inhoud = cursor.take("inhoud", required=True)
    assert inhoud is not None
    cursor.done()
    if _children(inhoud):
        raise RequestInvalid("inhoud must be base64 text")
    raw = _B64_WS.sub(b"", (inhoud.text or "").encode("ascii", "replace"))
    # 4 base64 characters per 3 octets: refuse before decoding when clearly too large.
    if len(raw) > (INHOUD_MAX_BYTES + 2) // 3 * 4:
        raise InhoudTooLarge(f"{bestandsnaam}: inhoud larger than {INHOUD_MAX_BYTES} bytes")
    try:
        content = strict_b64decode(raw)
    except ValueError:
        raise RequestInvalid(f"{bestandsnaam}: inhoud is not valid base64") from None
    if len(content) > INHOUD_MAX_BYTES:
        raise InhoudTooLarge(f"{bestandsnaam}: inhoud larger than {INHOUD_MAX_BYTES} bytes")
    return Document(mime_type, bestandsnaam, content=content)


# --------------------------------------------------------------------------- aanleveren


@dataclass(frozen=True)
class AanleverVerzoek:
    berichtsoort: str
    belanghebbende: Identiteit
    rol_belanghebbende: str
    inhoud: Document
    bijlagen: tuple[Document, ...] = ()
    kenmerk: str | None = None
    aanleverkenmerk: str | None = None
    eerder_aanleverkenmerk: str | None = None
    ontvanger: Identiteit | None = None
    rol_ontvanger: str | None = None
    autorisatie_adres: str | None = None


def parse_aanlever_request(payload: etree._Element) -> AanleverVerzoek:
    if payload.tag != f"{KV}aanleverRequest":
        raise RequestInvalid("Body does not hold an aanleverRequest")
    c = _Cursor(payload)
    kenmerk = _opt_text(c, "kenmerk", 40)
    berichtsoort = _req_text(c, "berichtsoort", 80)
    aanleverkenmerk = _opt_text(c, "aanleverkenmerk", 40)
    eerder = _opt_text(c, "eerderAanleverkenmerk", 40)
    belanghebbende = _identiteit(_must(c.take("identiteitBelanghebbende", required=True)))
    rol = _req_text(c, "rolBelanghebbende", 40)
    ontvanger_el = c.take("identiteitOntvanger", required=False)
    ontvanger = _identiteit(ontvanger_el) if ontvanger_el is not None else None
    rol_ontvanger = _opt_text(c, "rolOntvanger", 40)
    inhoud = _document(_must(c.take("berichtInhoud", required=True)))
    bijlagen: tuple[Document, ...] = ()
    bijlagen_el = c.take("berichtBijlagen", required=False)
    if bijlagen_el is not None:
        bc = _Cursor(bijlagen_el)
        items = bc.take_all("bijlage")
        bc.done()
        if not items:
            raise RequestInvalid("berichtBijlagen without bijlage")
        bijlagen = tuple(_document(b) for b in items)
    autorisatie = _opt_text(c, "autorisatieAdres", 255)
    c.done()
    return AanleverVerzoek(
        berichtsoort=berichtsoort,
        belanghebbende=belanghebbende,
        rol_belanghebbende=rol,
        inhoud=inhoud,
        bijlagen=bijlagen,
        kenmerk=kenmerk,
        aanleverkenmerk=aanleverkenmerk,
        eerder_aanleverkenmerk=eerder,
        ontvanger=ontvanger,
        rol_ontvanger=rol_ontvanger,
        autorisatie_adres=autorisatie,
    )


def _must(element: etree._Element | None) -> etree._Element:
    assert element is not None
    return element


def format_datetime(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sub(parent: etree._Element, name: str, text: str | None) -> etree._Element:
    element = etree.SubElement(parent, f"{KV}{name}")
    element.text = text
    return element


def _sub_identiteit(parent: etree._Element, name: str, ident: Identiteit) -> None:
    element = _sub(parent, name, None)
    _sub(element, "nummer", ident.nummer)
    _sub(element, "type", ident.type)


def aanlever_response(
    verzoek: AanleverVerzoek, kenmerk: str, tijdstempel: datetime
) -> etree._Element:
    root = etree.Element(f"{KV}aanleverResponse", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    _sub(root, "kenmerk", kenmerk)
    _sub(root, "berichtsoort", verzoek.berichtsoort)
    if verzoek.aanleverkenmerk is not None:
        _sub(root, "aanleverkenmerk", verzoek.aanleverkenmerk)
    if verzoek.eerder_aanleverkenmerk is not None:
        _sub(root, "eerderAanleverkenmerk", verzoek.eerder_aanleverkenmerk)
    _sub(root, "tijdstempelAangeleverd", format_datetime(tijdstempel))
    _sub_identiteit(root, "identiteitBelanghebbende", verzoek.belanghebbende)
    _sub(root, "rolBelanghebbende", verzoek.rol_belanghebbende)
    if verzoek.ontvanger is not None:
        _sub_identiteit(root, "identiteitOntvanger", verzoek.ontvanger)
    if verzoek.rol_ontvanger is not None:
        _sub(root, "rolOntvanger", verzoek.rol_ontvanger)
    if verzoek.autorisatie_adres is not None:
        _sub(root, "autorisatieAdres", verzoek.autorisatie_adres)
    return root


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class StatusVraag:
    """Any statusinformatieservice request (fields absent for an operation are None)."""

    operation: str
    kenmerk: str | None = None
    berichtsoort: str | None = None
    belanghebbende: Identiteit | None = None
    autorisatie_adres: str | None = None
    vanaf: datetime | None = None
    tot: datetime | None = None


_STATUS_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "getStatussenProces": ("kenmerk", "autorisatieAdres", "tijdstempelVanaf", "tijdstempelTot"),
    "getNieuweStatussenProces": (
        "kenmerk",
        "autorisatieAdres",
        "tijdstempelVanaf",
        "tijdstempelTot",
    ),
    "getNieuweStatussen": (
        "berichtsoort",
        "identiteitBelanghebbende",
        "autorisatieAdres",
        "tijdstempelVanaf",
        "tijdstempelTot",
    ),
    "getProcessen": ("berichtsoort", "identiteitBelanghebbende", "autorisatieAdres"),
    "getBerichtsoorten": ("identiteitBelanghebbende", "autorisatieAdres"),
}
_OPTIONAL: Final = frozenset({"autorisatieAdres", "tijdstempelVanaf", "tijdstempelTot"})


_FIELD_LIMITS: Final = {"kenmerk": 40, "berichtsoort": 80, "autorisatieAdres": 255}


def parse_query_fields(
    payload: etree._Element, fields: tuple[str, ...], required: frozenset[str]
) -> dict[str, Any]:
    """The query fields of a status or ophaal request, in XSD order, as the keyword
    arguments of :class:`StatusVraag` (less ``operation``); RequestInvalid otherwise."""
    c = _Cursor(payload)
    values: dict[str, object] = {}
    for name in fields:
        element = c.take(name, required=name in required)
        if element is None:
            continue
        if name == "identiteitBelanghebbende":
            values[name] = _identiteit(element)
        elif name.startswith("tijdstempel"):
            values[name] = _datetime(element)
        else:
            value = _text(element, _FIELD_LIMITS[name])
            if not value and name != "autorisatieAdres":
                raise RequestInvalid(f"{name} is empty")
            values[name] = value
    c.done()
    ident = values.get("identiteitBelanghebbende")
    vanaf, tot = values.get("tijdstempelVanaf"), values.get("tijdstempelTot")
    return {
        "kenmerk": _str_or_none(values.get("kenmerk")),
        "berichtsoort": _str_or_none(values.get("berichtsoort")),
        "belanghebbende": ident if isinstance(ident, Identiteit) else None,
        "autorisatie_adres": _str_or_none(values.get("autorisatieAdres")),
        "vanaf": vanaf if isinstance(vanaf, datetime) else None,
        "tot": tot if isinstance(tot, datetime) else None,
    }


def parse_status_request(operation: str, payload: etree._Element) -> StatusVraag:
    fields = _STATUS_FIELDS.get(operation)
    if fields is None or payload.tag != f"{KV}{operation}Request":
        raise RequestInvalid(f"Body does not hold a {operation}Request")
    required = frozenset(f for f in fields if f not in _OPTIONAL)
    return StatusVraag(operation=operation, **parse_query_fields(payload, fields, required))


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class StatusRegel:
    """A status with the envelope fields a StatusResultaat needs."""

    status: Status
    belanghebbende: Identiteit


@dataclass(frozen=True)
class Proces:
    kenmerk: str
    berichtsoort: str
    belanghebbende: Identiteit
    ontvanger: Identiteit | None = None


def _statusdetails(status: Status) -> str | None:
    parts: list[str] = []
    if status.recipient_oin:
        parts.append(f"ontvanger: {status.recipient_oin}")
    if status.details:
        parts.append(status.details)
    return "\n".join(parts) if parts else None


def statussen_response(operation: str, regels: Sequence[StatusRegel]) -> etree._Element:
    root = etree.Element(f"{KV}{operation}Response", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    ret = _sub(root, f"{operation}Return", None)
    for regel in regels:
        s = regel.status
        item = _sub(ret, "StatusResultaat", None)
        _sub(item, "kenmerk", str(s.kenmerk))
        _sub_identiteit(item, "identiteitBelanghebbende", regel.belanghebbende)
        _sub(item, "statuscode", s.code)
        _sub(item, "tijdstempelStatus", format_datetime(s.tijdstempel))
        _sub(item, "statusomschrijving", (s.omschrijving or s.code)[:80])
        if s.foutcode:
            fout = _sub(item, "statusFoutcode", None)
            _sub(fout, "foutcode", s.foutcode[:20])
            _sub(fout, "foutbeschrijving", s.foutbeschrijving or "")
        details = _statusdetails(s)
        if details:
            _sub(item, "statusdetails", details)
    return root


def processen_response(processen: Iterable[Proces]) -> etree._Element:
    root = etree.Element(f"{KV}getProcessenResponse", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    ret = _sub(root, "getProcessenReturn", None)
    for p in processen:
        item = _sub(ret, "ProcesResultaat", None)
        _sub(item, "kenmerk", p.kenmerk)
        _sub(item, "berichtsoort", p.berichtsoort)
        _sub_identiteit(item, "identiteitBelanghebbende", p.belanghebbende)
        if p.ontvanger is not None:
            _sub_identiteit(item, "identiteitOntvanger", p.ontvanger)
    return root


def berichtsoorten_response(names: Iterable[str]) -> etree._Element:
    root = etree.Element(f"{KV}getBerichtsoortenResponse", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    ret = _sub(root, "getBerichtsoortenReturn", None)
    for name in names:
        _sub(ret, "berichtsoort", name)
    return root


# --------------------------------------------------------------------------- afleveren


def aflever_response(
    kenmerk: str, berichtsoort: str | None, berichtkenmerk: str, tijdstempel: datetime
) -> etree._Element:
    """The afleverResponse a recipient's AfleverService answers (XSD order)."""
    root = etree.Element(f"{KV}afleverResponse", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    _sub(root, "kenmerk", kenmerk)
    if berichtsoort is not None:
        _sub(root, "berichtsoort", berichtsoort)
    _sub(root, "berichtkenmerk", berichtkenmerk)
    _sub(root, "tijdstempelAfgeleverd", format_datetime(tijdstempel))
    return root


def zet_status_response(kenmerk: str, statuscode: str) -> etree._Element:
    root = etree.Element(f"{KV}zetStatusResponse", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    _sub(root, "kenmerk", kenmerk)
    _sub(root, "statuscode", statuscode)
    return root
