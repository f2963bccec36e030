"""Envelopes and their documents in PostgreSQL (batched reads and writes).

:func:`accept_batch` is intake's one statement per group commit (issue 15 item 2): the
replay check, the resubmission claim, envelopes, documents and statuses 105/100/110, and
the ``handed_off`` marks of earlier batches — one round trip, one implicit transaction.
"""

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


def _envelope_row(e: NewEnvelope) -> tuple[Any, ...]:
    """The envelopes columns of ``e``, in the order of the unnest() statements."""
    a = e.aanlevering
    return (
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


def _add_documents(doc_cols: list[list[Any]], e: NewEnvelope) -> None:
    for d in e.documents:
        dvals = (e.kenmerk, d.seq, d.mime_type, d.bestandsnaam, d.size, d.sha256, d.data)
        for dcol, dv in zip(doc_cols, dvals, strict=True):
            dcol.append(dv)


async def insert_envelopes(conn: asyncpg.Connection, batch: Sequence[NewEnvelope]) -> None:
    env_cols: list[list[Any]] = [[] for _ in range(15)]
    doc_cols: list[list[Any]] = [[] for _ in range(7)]
    for e in batch:
        for col, v in zip(env_cols, _envelope_row(e), strict=True):
            col.append(v)
        _add_documents(doc_cols, e)
    await conn.execute(_INSERT_ENVELOPES, *env_cols)
    await conn.execute(_INSERT_DOCUMENTS, *doc_cols)


# One statement for a group commit. Data-modifying CTEs see one snapshot and talk to each
# other only through RETURNING. ``seen``: the message ids recorded now (the first row of
# each; a row whose message id conflicted or repeats an earlier row is a replay).
# ``claimed``: the resubmission keys claimed now (fresh, or taken over after the window)
# by the first fresh row of each key; ``earlier``: the keys' rows committed before this
# statement (the originals of a resubmission). An envelope is inserted when its row is
# fresh and its key (if any) was claimed for it; documents and statuses follow it.
# ``marked`` sets handed_off for envelopes of earlier batches whose work item was
# confirmed (a HOT update: migration 015).
_ACCEPT = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[],
        $12::text[], $13::text[], $14::text[], $15::timestamptz[], $16::bytea[], $17::text[])
        WITH ORDINALITY AS i(kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
        eerder_aanleverkenmerk, berichtkenmerk, belanghebbende_nummer, belanghebbende_type,
        rol_belanghebbende, ontvanger_nummer, ontvanger_type, rol_ontvanger,
        autorisatie_adres, tijdstempel_aangeleverd, sleutel, replay, ord)
), firsts AS (
    SELECT DISTINCT ON (sender_oin, replay) sender_oin, replay, ord FROM input
    WHERE replay IS NOT NULL ORDER BY sender_oin, replay, ord
), seen AS (
    INSERT INTO wus_message_ids (sender_oin, message_id)
    SELECT sender_oin, replay FROM firsts ORDER BY sender_oin, replay
    ON CONFLICT DO NOTHING
    RETURNING sender_oin, message_id
), fresh AS (
    SELECT i.* FROM input i
    WHERE i.replay IS NULL
       OR i.ord IN (SELECT f.ord FROM firsts f JOIN seen s
                    ON s.sender_oin = f.sender_oin AND s.message_id = f.replay)
), earlier AS (
    SELECT r.sleutel, r.kenmerk, r.tijdstempel FROM resubmission_keys r
    WHERE r.sleutel IN (SELECT sleutel FROM fresh WHERE sleutel IS NOT NULL)
), claimed AS (
    INSERT INTO resubmission_keys AS r (sleutel, kenmerk, tijdstempel)
    SELECT DISTINCT ON (sleutel) sleutel, kenmerk, tijdstempel_aangeleverd FROM fresh
    WHERE sleutel IS NOT NULL ORDER BY sleutel, ord
    ON CONFLICT (sleutel) DO UPDATE
        SET kenmerk = EXCLUDED.kenmerk, tijdstempel = EXCLUDED.tijdstempel
        WHERE r.tijdstempel < EXCLUDED.tijdstempel - make_interval(secs => $25)
    RETURNING sleutel, kenmerk, tijdstempel
), env AS (
    INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
        eerder_aanleverkenmerk, berichtkenmerk, belanghebbende_nummer, belanghebbende_type,
        rol_belanghebbende, ontvanger_nummer, ontvanger_type, rol_ontvanger,
        autorisatie_adres, tijdstempel_aangeleverd)
    SELECT kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
        eerder_aanleverkenmerk, berichtkenmerk, belanghebbende_nummer, belanghebbende_type,
        rol_belanghebbende, ontvanger_nummer, ontvanger_type, rol_ontvanger,
        autorisatie_adres, tijdstempel_aangeleverd
    FROM fresh f
    WHERE f.sleutel IS NULL OR f.kenmerk IN (SELECT kenmerk FROM claimed)
    RETURNING kenmerk, tijdstempel_aangeleverd
), docs AS (
    INSERT INTO documents (kenmerk, seq, mime_type, bestandsnaam, size, sha256, data)
    SELECT * FROM unnest($18::uuid[], $19::smallint[], $20::text[], $21::text[],
        $22::bigint[], $23::text[], $24::bytea[]) AS d(kenmerk, seq, mime_type, bestandsnaam,
        size, sha256, data)
    WHERE d.kenmerk IN (SELECT kenmerk FROM env)
), st AS (
    INSERT INTO statuses (kenmerk, code, tijdstempel, omschrijving)
    SELECT e.kenmerk, c.code, e.tijdstempel_aangeleverd, c.omschrijving
    FROM env e JOIN input i USING (kenmerk)
    CROSS JOIN unnest($26::text[], $27::text[]) WITH ORDINALITY AS c(code, omschrijving, n)
    ORDER BY i.ord, c.n
    ON CONFLICT DO NOTHING
), marked AS (
    UPDATE envelopes SET handed_off = true WHERE kenmerk = ANY($28::uuid[])
)
SELECT i.ord,
    EXISTS (SELECT 1 FROM env e WHERE e.kenmerk = i.kenmerk) AS created,
    NOT EXISTS (SELECT 1 FROM fresh f WHERE f.ord = i.ord) AS replayed,
    coalesce(c.kenmerk, o.kenmerk) AS original_kenmerk,
    coalesce(c.tijdstempel, o.tijdstempel) AS original_tijdstempel
FROM input i
LEFT JOIN claimed c ON c.sleutel = i.sleutel
LEFT JOIN earlier o ON o.sleutel = i.sleutel
ORDER BY i.ord
"""


@dataclass(frozen=True)
class Submission:
    """One row of :func:`accept_batch`: the envelope to create and what guards it."""

    envelope: NewEnvelope
    sleutel: bytes | None = None  # resubmission key (digipoort.resubmission.sleutel)
    replay: str | None = None  # message id digest, unique per sender (wus_message_ids)


@dataclass(frozen=True)
class Outcome:
    created: bool
    replayed: bool  # the message id was seen before: nothing was created
    # the committed original whose key this submission lost (None: fetch it again)
    original: tuple[UUID, datetime] | None


async def accept_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    batch: Sequence[Submission],
    *,
    statuses: Sequence[tuple[str, str]],
    handed_off: Sequence[UUID],
    window_seconds: float,
) -> list[Outcome]:
    """Run :data:`_ACCEPT` for ``batch``; one :class:`Outcome` per row, in order. Rows
    repeating a key follow the first (its envelope is their original); rows repeating a
    message id are replays. ``statuses`` are (code, omschrijving) written
    for every envelope created; ``handed_off`` are marked."""
    env_cols: list[list[Any]] = [[] for _ in range(17)]
    doc_cols: list[list[Any]] = [[] for _ in range(7)]
    for sub in batch:
        e = sub.envelope
        values = (*_envelope_row(e), sub.sleutel, sub.replay)
        for col, v in zip(env_cols, values, strict=True):
            col.append(v)
        _add_documents(doc_cols, e)
    rows = await conn.fetch(
        _ACCEPT,
        *env_cols,
        *doc_cols,
        window_seconds,
        [code for code, _ in statuses],
        [text for _, text in statuses],
        list(handed_off),
    )
    outcomes: list[Outcome] = []
    for r in rows:
        original = r["original_kenmerk"]
        outcomes.append(
            Outcome(
                created=r["created"],
                replayed=r["replayed"],
                original=(original, r["original_tijdstempel"]) if original is not None else None,
            )
        )
    return outcomes


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
