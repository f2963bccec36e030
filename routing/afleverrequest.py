"""The ``afleverRequest`` document (koppelvlak XSD) a recipient receives for an envelope.

The same document travels in the recipient's AMQP queue and in a WUS AfleverService push.
Pure function: an envelope record (with document bytes) in, UTF-8 XML bytes out.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import datetime

from lxml import etree

from digipoort.envelope import EnvelopeRecord, Identiteit, StoredDocument

NS = "http://logius.nl/digipoort/koppelvlakservices/1.2/"
_Q = "{%s}" % NS  # noqa: UP031


def iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _text(parent: etree._Element, name: str, value: str | None) -> None:
    if value is not None:
        etree.SubElement(parent, _Q + name).text = value


def _identiteit(parent: etree._Element, name: str, ident: Identiteit) -> None:
    el = etree.SubElement(parent, _Q + name)
    _text(el, "nummer", ident.nummer)
    _text(el, "type", ident.type)


def _inhoud(
    parent: etree._Element, name: str, doc: StoredDocument, content: bytes, mime_type: str
) -> None:
    el = etree.SubElement(parent, _Q + name)
    _text(el, "mimeType", mime_type)
    _text(el, "bestandsnaam", doc.bestandsnaam)
    _text(el, "inhoud", base64.b64encode(content).decode("ascii"))


def aflever_element(
    record: EnvelopeRecord,
    content_of: Callable[[StoredDocument], bytes],
    mime_of: Callable[[StoredDocument], str] | None = None,
    *,
    tag: str = "afleverRequest",
) -> etree._Element:
    """The afleverRequest fields as an element named ``tag``: ``afleverRequest``, or
    ``BerichtResultaat`` (Ophaalservice; that type also carries eerderAanleverkenmerk)."""
    mime = mime_of or (lambda d: d.mime_type)
    root = etree.Element(_Q + tag, nsmap={None: NS})  # type: ignore[dict-item]
    _text(root, "kenmerk", str(record.kenmerk))
    _text(root, "berichtsoort", record.berichtsoort)
    _text(root, "berichtkenmerk", record.berichtkenmerk)
    _text(root, "aanleverkenmerk", record.aanleverkenmerk)
    if tag == "BerichtResultaat":
        _text(root, "eerderAanleverkenmerk", record.eerder_aanleverkenmerk)
    _text(root, "tijdstempelAangeleverd", iso(record.tijdstempel_aangeleverd))
    _identiteit(root, "identiteitBelanghebbende", record.belanghebbende)
    _text(root, "rolBelanghebbende", record.rol_belanghebbende)
    _text(root, "identiteitAanleveraar", record.sender_oin)
    if record.ontvanger is not None:
        _identiteit(root, "identiteitOntvanger", record.ontvanger)
    _text(root, "rolOntvanger", record.rol_ontvanger)
    docs = sorted(record.documents, key=lambda d: d.seq)
    _inhoud(root, "berichtInhoud", docs[0], content_of(docs[0]), mime(docs[0]))
    if len(docs) > 1:
        bijlagen = etree.SubElement(root, _Q + "berichtBijlagen")
        for d in docs[1:]:
            _inhoud(bijlagen, "bijlage", d, content_of(d), mime(d))
    return root


def build_aflever_request(
    record: EnvelopeRecord,
    content_of: Callable[[StoredDocument], bytes],
    mime_of: Callable[[StoredDocument], str] | None = None,
) -> bytes:
    """``content_of`` returns the bytes to put in ``inhoud`` for a document (its content,
    or for a large one a Grote Berichten reference document); ``mime_of`` its mimeType."""
    root = aflever_element(record, content_of, mime_of)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
