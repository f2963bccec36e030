"""Status history in PostgreSQL: written in batches, read per kenmerk in order."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from digipoort.status import Status

_INSERT = """
INSERT INTO statuses (kenmerk, recipient_oin, code, tijdstempel, omschrijving,
                      foutcode, foutbeschrijving, details)
SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                     $6::text[], $7::text[], $8::text[])
ON CONFLICT DO NOTHING
"""


async def write_statuses(
    conn: asyncpg.Connection | asyncpg.Pool, statuses: Sequence[Status]
) -> None:
    """Insert many statuses in one round trip; a status recorded before is kept once."""
    if not statuses:
        return
    cols: list[list[Any]] = [[] for _ in range(8)]
    for s in statuses:
        for col, value in zip(
            cols,
            (
                s.kenmerk,
                s.recipient_oin,
                s.code,
                s.tijdstempel,
                s.omschrijving,
                s.foutcode,
                s.foutbeschrijving,
                s.details,
            ),
            strict=True,
        ):
            col.append(value)
    await conn.execute(_INSERT, *cols)


_STAGE_BATCH = """
WITH s AS (
    INSERT INTO statuses (kenmerk, recipient_oin, code, tijdstempel, omschrijving,
                          foutcode, foutbeschrijving, details)
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[],
                         $6::text[], $7::text[], $8::text[])
    ON CONFLICT DO NOTHING
), e AS (
    UPDATE envelopes e SET stage = x.stage,
           validatieprofiel = coalesce(x.profiel, e.validatieprofiel), updated_at = now()
    FROM unnest($9::uuid[], $10::text[], $11::text[]) AS x(kenmerk, stage, profiel)
    WHERE e.kenmerk = x.kenmerk
), d AS (
    INSERT INTO deliveries (kenmerk, recipient_oin, channel)
    SELECT * FROM unnest($12::uuid[], $13::text[], $14::text[])
    ON CONFLICT DO NOTHING
), q AS (
    UPDATE deliveries d SET state = 'queued', attempts = attempts + 1, updated_at = now()
    FROM unnest($15::uuid[], $16::text[]) AS x(kenmerk, oin)
    WHERE d.kenmerk = x.kenmerk AND d.recipient_oin = x.oin
)
SELECT 1
"""


def _columns(statuses: Sequence[Status]) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(8)]
    for s in statuses:
        cols[0].append(s.kenmerk)
        cols[1].append(s.recipient_oin)
        cols[2].append(s.code)
        cols[3].append(s.tijdstempel)
        cols[4].append(s.omschrijving)
        cols[5].append(s.foutcode)
        cols[6].append(s.foutbeschrijving)
        cols[7].append(s.details)
    return cols


async def write_stage_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    statuses: Sequence[Status],
    *,
    stages: Mapping[UUID, str] | None = None,
    profiles: Mapping[UUID, str] | None = None,
    deliveries: Sequence[tuple[UUID, str, str]] = (),
    queued: Sequence[tuple[UUID, str]] = (),
) -> None:
    """A stage's writes for a batch in ONE statement (one round trip, one commit: a
    statement is atomic without BEGIN/COMMIT): the statuses, the envelopes' new stage
    (and validation profile), new delivery rows ``(kenmerk, recipient, channel)`` and
    deliveries now ``queued`` (published and confirmed). Data-modifying CTEs: every part
    commits or none does; a part without rows costs next to nothing."""
    if not (statuses or stages or deliveries or queued):
        return
    stage_map = stages or {}
    profile_map = profiles or {}
    await conn.execute(
        _STAGE_BATCH,
        *_columns(statuses),
        list(stage_map),
        list(stage_map.values()),
        [profile_map.get(k) for k in stage_map],
        [d[0] for d in deliveries],
        [d[1] for d in deliveries],
        [d[2] for d in deliveries],
        [k for k, _ in queued],
        [o for _, o in queued],
    )


async def history(conn: asyncpg.Connection | asyncpg.Pool, kenmerk: UUID) -> list[Status]:
    rows = await conn.fetch(
        "SELECT kenmerk, recipient_oin, code, tijdstempel, omschrijving, foutcode,"
        " foutbeschrijving, details FROM statuses WHERE kenmerk = $1 ORDER BY id",
        kenmerk,
    )
    return [status_from_row(r) for r in rows]


def status_from_row(r: asyncpg.Record) -> Status:
    """A Status from a row with the columns of the ``statuses`` table."""
    return Status(
        kenmerk=r["kenmerk"],
        code=r["code"],
        tijdstempel=r["tijdstempel"],
        recipient_oin=r["recipient_oin"],
        foutcode=r["foutcode"],
        foutbeschrijving=r["foutbeschrijving"],
        details=r["details"],
        omschrijving=r["omschrijving"],
    )
