"""Envelopes and their documents in PostgreSQL (batched reads and writes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from digipoort.envelope import (
    Aanlevering,
    EnvelopeRecord,
    Identiteit,
    StoredDocument,
)


@dataclass(frozen=True)
class NewEnvelope:
    kenmerk: UUID
    tijdstempel: datetime
    aanlevering: Aanlevering
    documents: list[StoredDocument]


_INSERT_ENVELOPES = """
INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
    eerder_aanleverkenmerk, berichtkenmerk, belanghebbende_nummer, belanghebbende_type,
    rol_belanghebbende, ontvanger_nummer, ontvanger_type, rol_ontvanger, autorisatie_adres,
    tijdstempel_aangeleverd)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
    $14::text[], $15::timestamptz[])
"""

_INSERT_DOCUMENTS = """
INSERT INTO documents (kenmerk, seq, mime_type, bestandsnaam, size, sha256, data)
SELECT * FROM unnest($1::uuid[], $2::smallint[], $3::text[], $4::text[], $5::bigint[],
    $6::text[], $7::bytea[])
"""


async def insert_envelopes(conn: asyncpg.Connection, batch: Sequence[NewEnvelope]) -> None:
    env_cols: list[list[Any]] = [[] for _ in range(15)]
    doc_cols: list[list[Any]] = [[] for _ in range(7)]
    for e in batch:
        a = e.aanlevering
        values: tuple[Any, ...] = (
            e.kenmerk,
            a.berichtsoort,
            a.koppelvlak,
            a.sender_oin,
            a.aanleverkenmerk,
            a.eerder_aanleverkenmerk,
            a.berichtkenmerk or str(e.kenmerk),
            a.belanghebbende.nummer,
            a.belanghebbende.type,
            a.rol_belanghebbende,
            a.ontvanger.nummer if a.ontvanger else None,
            a.ontvanger.type if a.ontvanger else None,
            a.rol_ontvanger,
            a.autorisatie_adres,
            e.tijdstempel,
        )
        for col, v in zip(env_cols, values, strict=True):
            col.append(v)
        for d in e.documents:
            dvals = (e.kenmerk, d.seq, d.mime_type, d.bestandsnaam, d.size, d.sha256, d.data)
            for dcol, dv in zip(doc_cols, dvals, strict=True):
                dcol.append(dv)
    await conn.execute(_INSERT_ENVELOPES, *env_cols)
    await conn.execute(_INSERT_DOCUMENTS, *doc_cols)


async def mark_handed_off(
    conn: asyncpg.Connection | asyncpg.Pool, kenmerken: Sequence[UUID]
) -> None:
    if kenmerken:
        await conn.execute(
            "UPDATE envelopes SET handed_off = true WHERE kenmerk = ANY($1::uuid[])",
            list(kenmerken),
        )


async def set_stage(
    conn: asyncpg.Connection | asyncpg.Pool, stage_by_kenmerk: dict[UUID, str]
) -> None:
    if stage_by_kenmerk:
        await conn.execute(
            "UPDATE envelopes e SET stage = s.stage, updated_at = now()"
            " FROM unnest($1::uuid[], $2::text[]) AS s(kenmerk, stage)"
            " WHERE e.kenmerk = s.kenmerk",
            list(stage_by_kenmerk),
            list(stage_by_kenmerk.values()),
        )


def _record(r: asyncpg.Record) -> EnvelopeRecord:
    return EnvelopeRecord(
        kenmerk=r["kenmerk"],
        berichtsoort=r["berichtsoort"],
        koppelvlak=r["koppelvlak"],
        sender_oin=r["sender_oin"],
        berichtkenmerk=r["berichtkenmerk"],
        belanghebbende=Identiteit(r["belanghebbende_nummer"], r["belanghebbende_type"]),
        rol_belanghebbende=r["rol_belanghebbende"],
        tijdstempel_aangeleverd=r["tijdstempel_aangeleverd"],
        stage=r["stage"],
        aanleverkenmerk=r["aanleverkenmerk"],
        eerder_aanleverkenmerk=r["eerder_aanleverkenmerk"],
        ontvanger=(
            Identiteit(r["ontvanger_nummer"], r["ontvanger_type"] or "OIN")
            if r["ontvanger_nummer"]
            else None
        ),
        rol_ontvanger=r["rol_ontvanger"],
        autorisatie_adres=r["autorisatie_adres"],
    )


async def fetch_envelopes(
    conn: asyncpg.Connection | asyncpg.Pool,
    kenmerken: Sequence[UUID],
    *,
    with_documents: bool = True,
) -> dict[UUID, EnvelopeRecord]:
    rows = await conn.fetch(
        "SELECT * FROM envelopes WHERE kenmerk = ANY($1::uuid[])", list(kenmerken)
    )
    records = {r["kenmerk"]: _record(r) for r in rows}
    if with_documents and records:
        docs = await conn.fetch(
            "SELECT kenmerk, seq, mime_type, bestandsnaam, size, sha256, data FROM documents"
            " WHERE kenmerk = ANY($1::uuid[]) ORDER BY kenmerk, seq",
            list(records),
        )
        for d in docs:
            records[d["kenmerk"]].documents.append(
                StoredDocument(
                    seq=d["seq"],
                    mime_type=d["mime_type"],
                    bestandsnaam=d["bestandsnaam"],
                    size=d["size"],
                    sha256=d["sha256"],
                    data=d["data"],
                )
            )
    return records
