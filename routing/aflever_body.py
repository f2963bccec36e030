"""What a recipient receives for an envelope, whatever the channel: the afleverRequest
(queue, WUS push) or a BerichtResultaat (Ophaalservice).

Small documents travel inline, documents above ``grote_berichten.threshold_bytes`` as a
Digikoppeling Grote Berichten reference (recorded in ``gb_references`` so the download
endpoint serves it). Shared by the router, the deliverer and the Ophaalservice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from lxml import etree

from digipoort.config import GroteBerichtenConfig
from digipoort.envelope import EnvelopeRecord, StoredDocument
from digipoort.payloads import PayloadStore
from routing.afleverrequest import aflever_element
from routing.grote_berichten import REFERENCE_MIME_TYPE, Reference, build_reference


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
    base = public_url.rstrip("/")
    contents: dict[int, bytes] = {}
    references: list[tuple[StoredDocument, Reference]] = []
    now = datetime.now(UTC)
    for doc in record.documents:
        if doc.size > grote_berichten.threshold_bytes:
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
            contents[doc.seq] = build_reference(ref)
        elif doc.data is not None:
            contents[doc.seq] = doc.data
        else:
            contents[doc.seq] = await store.read(doc.sha256)
    if references:
        await pool.executemany(
            "INSERT INTO gb_references (kenmerk, seq, sha256, size, expires_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kenmerk, seq) DO NOTHING",
            [(record.kenmerk, d.seq, d.sha256, d.size, r.expiration_time) for d, r in references],
        )
    by_ref = {d.seq for d, _ in references}

    def content_of(doc: StoredDocument) -> bytes:
        return contents[doc.seq]

    def mime_of(doc: StoredDocument) -> str:
        return REFERENCE_MIME_TYPE if doc.seq in by_ref else doc.mime_type

    return aflever_element(record, content_of, mime_of, tag=tag)


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
