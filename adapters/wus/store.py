"""PostgreSQL queries of the WUS adapter: replay cache, status queries, conformance envelopes.

Visibility rule (docs/wus.md): a caller sees an envelope when it submitted it
(``sender_oin``), or when the envelope's identiteitBelanghebbende is the caller's own OIN
(type ``OIN``) and the query carries the same autorisatieAdres the envelope was submitted
with. Anything else is indistinguishable from an unknown kenmerk.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import asyncpg

from adapters.wus.messages import Proces, StatusRegel
from digipoort.envelope import Identiteit
from digipoort.status import Status
from digipoort.statusstore import status_from_row, write_statuses

#: Most statuses / processes returned by one call; the rest come with the next call.
MAX_RESULTS = 1000

_VISIBLE = (
    "(e.sender_oin = $1 OR (e.belanghebbende_type = 'OIN' AND e.belanghebbende_nummer = $1"
    " AND $2::text IS NOT NULL AND e.autorisatie_adres = $2))"
)
_STATUS_COLUMNS = (
    "s.id, s.kenmerk, s.recipient_oin, s.code, s.tijdstempel, s.omschrijving, s.foutcode,"
    " s.foutbeschrijving, s.details, e.belanghebbende_nummer, e.belanghebbende_type"
)
_WINDOW = (
    "($3::timestamptz IS NULL OR s.tijdstempel >= $3)"
    " AND ($4::timestamptz IS NULL OR s.tijdstempel <= $4)"
)

#: getNieuweStatussen*: only statuses of the last NIEUWE_DAYS count as "new", so the
#: bookkeeping of what was returned to whom can be purged after that time (bounded).
NIEUWE_DAYS = 30
_RECENT = f"s.tijdstempel > now() - interval '{NIEUWE_DAYS} days'"


@dataclass(frozen=True)
class EnvelopeInfo:
    kenmerk: UUID
    berichtsoort: str
    aanleverkenmerk: str | None


def message_id_digest(message_id: str) -> str:
    """What the replay cache stores of a wsa:MessageID: its SHA-256 (hex), so the key has a
    fixed size whatever the client sends."""
    return hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


async def remember_message_id(pool: asyncpg.Pool, oin: str, message_id: str) -> bool:
    """Record a wsa:MessageID (as its digest); False if this signer used it before (a
    replay)."""
    row = await pool.fetchval(
        "INSERT INTO wus_message_ids (sender_oin, message_id) VALUES ($1, $2)"
        " ON CONFLICT DO NOTHING RETURNING 1",
        oin,
        message_id_digest(message_id),
    )
    return row is not None


async def purge_message_ids(pool: asyncpg.Pool, older_than: timedelta) -> None:
    await pool.execute(
        "DELETE FROM wus_message_ids WHERE seen_at < now() - $1::interval", older_than
    )


async def purge_returned(pool: asyncpg.Pool) -> None:
    """Forget what was returned to whom once those statuses can no longer be "new"."""
    await pool.execute(
        "DELETE FROM wus_statuses_returned WHERE returned_at < now() - make_interval(days => $1)",
        NIEUWE_DAYS,
    )


def _kenmerk(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


async def visible_envelope(
    pool: asyncpg.Pool, caller: str, kenmerk: str, autorisatie_adres: str | None
) -> EnvelopeInfo | None:
    """The envelope if the caller may see it; None when unknown *or* not the caller's."""
    uuid = _kenmerk(kenmerk)
    if uuid is None:
        return None
    row = await pool.fetchrow(
        f"SELECT e.kenmerk, e.berichtsoort, e.aanleverkenmerk FROM envelopes e"  # noqa: S608
        f" WHERE e.kenmerk = $3 AND {_VISIBLE}",
        caller,
        autorisatie_adres,
        uuid,
    )
    if row is None:
        return None
    return EnvelopeInfo(row["kenmerk"], row["berichtsoort"], row["aanleverkenmerk"])


def _regel(r: asyncpg.Record) -> StatusRegel:
    return StatusRegel(
        status_from_row(r),
        Identiteit(r["belanghebbende_nummer"], r["belanghebbende_type"]),
    )


async def statussen(
    pool: asyncpg.Pool, kenmerk: UUID, vanaf: datetime | None, tot: datetime | None
) -> list[StatusRegel]:
    rows = await pool.fetch(
        f"SELECT {_STATUS_COLUMNS} FROM statuses s JOIN envelopes e USING (kenmerk)"  # noqa: S608
        f" WHERE s.kenmerk = $1 AND $2::int IS NULL AND {_WINDOW}"
        f" ORDER BY s.id LIMIT {MAX_RESULTS}",
        kenmerk,
        None,
        vanaf,
        tot,
    )
    return [_regel(r) for r in rows]


async def nieuwe_statussen_proces(
    pool: asyncpg.Pool,
    caller: str,
    kenmerk: UUID,
    vanaf: datetime | None,
    tot: datetime | None,
) -> list[StatusRegel]:
    """Statuses of one envelope not returned to ``caller`` before; marks them returned.

    The INSERT .. ON CONFLICT DO NOTHING RETURNING makes "each status once" exact even
    when the same caller asks concurrently."""
    rows = await pool.fetch(
        f"""
        WITH cand AS (
            SELECT {_STATUS_COLUMNS} FROM statuses s JOIN envelopes e USING (kenmerk)
            WHERE s.kenmerk = $1 AND $2::int IS NULL AND {_WINDOW} AND {_RECENT}
            ORDER BY s.id LIMIT {MAX_RESULTS}
        ), ins AS (
            INSERT INTO wus_statuses_returned (caller_oin, status_id, kenmerk)
            SELECT $5, id, kenmerk FROM cand ON CONFLICT DO NOTHING RETURNING status_id
        )
        SELECT * FROM cand WHERE id IN (SELECT status_id FROM ins) ORDER BY id
        """,  # noqa: S608
        kenmerk,
        None,
        vanaf,
        tot,
        caller,
    )
    return [_regel(r) for r in rows]


async def nieuwe_statussen(
    pool: asyncpg.Pool,
    caller: str,
    autorisatie_adres: str | None,
    berichtsoort: str,
    belanghebbende: Identiteit,
    vanaf: datetime | None,
    tot: datetime | None,
) -> list[StatusRegel]:
    """New statuses of every visible envelope of a berichtsoort and belanghebbende."""
    rows = await pool.fetch(
        f"""
        WITH cand AS (
            SELECT {_STATUS_COLUMNS} FROM statuses s JOIN envelopes e USING (kenmerk)
            WHERE {_VISIBLE} AND {_WINDOW} AND {_RECENT}
              AND e.berichtsoort = $5 AND e.belanghebbende_nummer = $6
              AND e.belanghebbende_type = $7
              AND NOT EXISTS (SELECT 1 FROM wus_statuses_returned r
                              WHERE r.kenmerk = s.kenmerk AND r.caller_oin = $1
                                AND r.status_id = s.id)
            ORDER BY s.id LIMIT {MAX_RESULTS}
        ), ins AS (
            INSERT INTO wus_statuses_returned (caller_oin, status_id, kenmerk)
            SELECT $1, id, kenmerk FROM cand ON CONFLICT DO NOTHING RETURNING status_id
        )
        SELECT * FROM cand WHERE id IN (SELECT status_id FROM ins) ORDER BY id
        """,  # noqa: S608
        caller,
        autorisatie_adres,
        vanaf,
        tot,
        berichtsoort,
        belanghebbende.nummer,
        belanghebbende.type,
    )
    return [_regel(r) for r in rows]


async def processen(
    pool: asyncpg.Pool,
    caller: str,
    autorisatie_adres: str | None,
    berichtsoort: str,
    belanghebbende: Identiteit,
) -> list[Proces]:
    rows = await pool.fetch(
        f"""
        SELECT e.kenmerk, e.berichtsoort, e.belanghebbende_nummer, e.belanghebbende_type,
               e.ontvanger_nummer, e.ontvanger_type
        FROM envelopes e
        WHERE {_VISIBLE} AND $3::int IS NULL AND e.berichtsoort = $4
          AND e.belanghebbende_nummer = $5 AND e.belanghebbende_type = $6
        ORDER BY e.tijdstempel_aangeleverd DESC LIMIT {MAX_RESULTS}
        """,  # noqa: S608
        caller,
        autorisatie_adres,
        None,
        berichtsoort,
        belanghebbende.nummer,
        belanghebbende.type,
    )
    return [
        Proces(
            kenmerk=str(r["kenmerk"]),
            berichtsoort=r["berichtsoort"],
            belanghebbende=Identiteit(r["belanghebbende_nummer"], r["belanghebbende_type"]),
            ontvanger=(
                Identiteit(r["ontvanger_nummer"], r["ontvanger_type"] or "OIN")
                if r["ontvanger_nummer"]
                else None
            ),
        )
        for r in rows
    ]


async def insert_conformance_envelope(
    pool: asyncpg.Pool,
    *,
    kenmerk: UUID,
    tijdstempel: datetime,
    sender_oin: str,
    berichtkenmerk: str,
    aanleverkenmerk: str | None,
    belanghebbende: Identiteit,
    rol_belanghebbende: str,
    ontvanger: Identiteit | None,
    autorisatie_adres: str | None,
    statuses: Sequence[Status],
) -> None:
    """A conformance (berichtsoort TEST) envelope: recorded with its scripted statuses,
    never handed to the pipeline (stage 'conformance', handed_off)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin,
                aanleverkenmerk, berichtkenmerk, belanghebbende_nummer, belanghebbende_type,
                rol_belanghebbende, ontvanger_nummer, ontvanger_type, autorisatie_adres,
                tijdstempel_aangeleverd, stage, handed_off)
            VALUES ($1, 'TEST', 'wus', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                    'conformance', true)
            """,
            kenmerk,
            sender_oin,
            aanleverkenmerk,
            berichtkenmerk,
            belanghebbende.nummer,
            belanghebbende.type,
            rol_belanghebbende,
            ontvanger.nummer if ontvanger else None,
            ontvanger.type if ontvanger else None,
            autorisatie_adres,
            tijdstempel,
        )
        await write_statuses(conn, statuses)
