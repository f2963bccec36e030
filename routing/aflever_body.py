"""What a recipient receives for an envelope, whatever the channel: the afleverRequest
(queue, WUS push) or a BerichtResultaat (Ophaalservice).

Small documents travel inline, documents above ``grote_berichten.threshold_bytes`` as a
Digikoppeling Grote Berichten reference (recorded in ``gb_references`` so the download
endpoint serves it). Shared by the router, the deliverer and the Ophaalservice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from lxml import etree

from digipoort.config import GroteBerichtenConfig
from digipoort.envelope import EnvelopeRecord, StoredDocument
from digipoort.payloads import PayloadStore
from routing.afleverrequest import aflever_element
from routing.grote_berichten import REFERENCE_MIME_TYPE, Reference, build_reference


@dataclass(frozen=True)
class RecipientDocument:
    """A document as a recipient receives it: its content, or for a large one the
    Grote Berichten reference document (``mime_type`` then ``REFERENCE_MIME_TYPE``;
    ``bestandsnaam`` stays the original name)."""

    seq: int
    bestandsnaam: str
    mime_type: str
    content: bytes
    reference: bool = False


async def recipient_documents(
    pool: asyncpg.Pool,
    store: PayloadStore,
    record: EnvelopeRecord,
    *,
    grote_berichten: GroteBerichtenConfig,
    public_url: str,
) -> list[RecipientDocument]:
    """The documents of ``record`` in order (0 = berichtInhoud), large ones by reference
    (recorded in ``gb_references`` so the download endpoint serves them)."""
    base = public_url.rstrip("/")
    result: list[RecipientDocument] = []
    references: list[tuple[StoredDocument, Reference]] = []
    now = datetime.now(UTC)
    for doc in sorted(record.documents, key=lambda d: d.seq):
        if doc.size > grote_berichten.threshold_bytes:
            if doc.data is not None and await store.size(doc.sha256) is None:
                # kept in PostgreSQL: the download endpoint serves from the payload store
                await store.put(doc.data)
            ref = Reference(
                context_id=f"{record.kenmerk}/{doc.seq}",
                url=f"{base}/grote-berichten/{record.kenmerk}/{doc.seq}",
                filename=doc.bestandsnaam,
                content_type=doc.mime_type,
                size=doc.size,
                sha256=doc.sha256,
                creation_time=now,
                expiration_time=now + timedelta(hours=grote_berichten.expiration_hours),
            )
            references.append((doc, ref))
            result.append(
                RecipientDocument(
                    doc.seq, doc.bestandsnaam, REFERENCE_MIME_TYPE, build_reference(ref), True
                )
            )
        else:
            data = doc.data if doc.data is not None else await store.read(doc.sha256)
            result.append(RecipientDocument(doc.seq, doc.bestandsnaam, doc.mime_type, data))
    if references:
        await pool.executemany(
            "INSERT INTO gb_references (kenmerk, seq, sha256, size, expires_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kenmerk, seq) DO NOTHING",
            [(record.kenmerk, d.seq, d.sha256, d.size, r.expiration_time) for d, r in references],
        )
    return result


def document_element(
    record: EnvelopeRecord, documents: list[RecipientDocument], *, tag: str = "afleverRequest"
) -> etree._Element:
    """The afleverRequest (or ``tag``) element from already resolved documents. Pure."""
    by_seq = {d.seq: d for d in documents}

    def content_of(doc: StoredDocument) -> bytes:
        return by_seq[doc.seq].content

    def mime_of(doc: StoredDocument) -> str:
        return by_seq[doc.seq].mime_type

    return aflever_element(record, content_of, mime_of, tag=tag)


async def aflever_document(
    pool: asyncpg.Pool,
    store: PayloadStore,
    record: EnvelopeRecord,
    *,
    grote_berichten: GroteBerichtenConfig,
    public_url: str,
    tag: str = "afleverRequest",
) -> etree._Element:
    """The afleverRequest (or ``tag``) element for ``record`` (documents loaded)."""
    documents = await recipient_documents(
        pool, store, record, grote_berichten=grote_berichten, public_url=public_url
    )
    return document_element(record, documents, tag=tag)


async def aflever_body(
    pool: asyncpg.Pool,
    store: PayloadStore,
    record: EnvelopeRecord,
    *,
    grote_berichten: GroteBerichtenConfig,
    public_url: str,
) -> bytes:
    """The afleverRequest document as UTF-8 XML bytes."""
    element = await aflever_document(
        pool, store, record, grote_berichten=grote_berichten, public_url=public_url
    )
    return etree.tostring(element, xml_declaration=True, encoding="UTF-8")
