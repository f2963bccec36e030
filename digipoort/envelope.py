"""The envelope model: what every koppelvlak hands to intake."""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID


@dataclass(frozen=True)
class Identiteit:
    nummer: str
    type: str


@dataclass(frozen=True)
class StoredBlob:
    """A document already streamed to the payload store (e.g. a large FTP upload)."""

    sha256: str
    size: int


@dataclass(frozen=True)
class Document:
    """berichtInhoud or a bijlage: content in memory, or a blob in the payload store."""

    mime_type: str
    bestandsnaam: str
    content: bytes | None = None
    blob: StoredBlob | None = None

    def __post_init__(self) -> None:
        if (self.content is None) == (self.blob is None):
            raise ValueError("a document has either content or a stored blob")

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.blob.size  # type: ignore[union-attr]


@dataclass(frozen=True)
class Aanlevering:
    """A submission as an adapter parsed it. ``sender_oin`` comes from the verified
    certificate, never from the message body (invariant 2)."""

    sender_oin: str
    koppelvlak: str
    berichtsoort: str
    belanghebbende: Identiteit
    rol_belanghebbende: str
    inhoud: Document
    bijlagen: tuple[Document, ...] = ()
    aanleverkenmerk: str | None = None
    eerder_aanleverkenmerk: str | None = None
    ontvanger: Identiteit | None = None
    rol_ontvanger: str | None = None
    autorisatie_adres: str | None = None
    berichtkenmerk: str | None = None  # the protocol's message id (wsa:MessageID, Message-ID)

    @property
    def documents(self) -> tuple[Document, ...]:
        return (self.inhoud, *self.bijlagen)

    @property
    def ontvanger_oin(self) -> str | None:
        if self.ontvanger is None:
            return None
        return self.ontvanger.nummer


@dataclass(frozen=True)
class Accepted:
    kenmerk: UUID
    tijdstempel_aangeleverd: datetime


@dataclass(frozen=True)
class StoredDocument:
    """A document as stored: inline bytes (small) or a reference into the payload store."""

    seq: int
    mime_type: str
    bestandsnaam: str
    size: int
    sha256: str
    data: bytes | None = None


@dataclass
class EnvelopeRecord:
    """An envelope as read back from PostgreSQL by the stages."""

    kenmerk: UUID
    berichtsoort: str
    koppelvlak: str
    sender_oin: str
    berichtkenmerk: str
    belanghebbende: Identiteit
    rol_belanghebbende: str
    tijdstempel_aangeleverd: datetime
    stage: str
    aanleverkenmerk: str | None = None
    eerder_aanleverkenmerk: str | None = None
    ontvanger: Identiteit | None = None
    rol_ontvanger: str | None = None
    autorisatie_adres: str | None = None
    documents: list[StoredDocument] = field(default_factory=list)

    @property
    def ontvanger_oin(self) -> str | None:
        return self.ontvanger.nummer if self.ontvanger else None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_kenmerk(at_ms: int | None = None) -> UUID:
    """A new kenmerk: a UUIDv7 (RFC 9562) — 48 bits of Unix time in ms, then 74 random
    bits. Time-ordered, so the kenmerken of one month form one uuid range: the history
    tables are partitioned by month on kenmerk (docs/reliability.md, "Retention and
    partitions")."""
    ms = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version 7
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a (12 bits)
    value |= 0x2 << 62  # variant 10
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b (62 bits)
    return UUID(int=value)
