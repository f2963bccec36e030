"""Status history in PostgreSQL: written in batches, read per kenmerk in order."""

from __future__ import annotations

from collections.abc import Sequence
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
