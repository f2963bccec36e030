"""Idempotent resubmission (issue 18, item 5; docs/reliability.md).

A sender whose answer was lost (the front died after the commit) resubmits. When the same
sender resubmits the same berichtsoort with the same aanleverkenmerk and the same
documents within ``intake.resubmission_window_seconds``, intake returns the original
kenmerk and tijdstempel instead of creating a second envelope.

Each keyed submission claims its key in ``resubmission_keys`` inside intake's own
statement (``INSERT ... ON CONFLICT`` in :func:`digipoort.envelopestore.accept_batch`;
:func:`claim` is the same claim on its own); the primary key serialises two identical
concurrent submissions, so exactly one of them creates the envelope.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from digipoort.envelope import Aanlevering, StoredDocument


@dataclass(frozen=True)
class Original:
    kenmerk: UUID
    tijdstempel: datetime


def sleutel(a: Aanlevering, documents: Sequence[StoredDocument]) -> bytes | None:
    """The resubmission key, or None without an aanleverkenmerk (then nothing changes).

    SHA-256 over length-prefixed fields: sender OIN, berichtsoort, aanleverkenmerk and the
    SHA-256 of every document (berichtInhoud, then bijlagen) in order — and, so that a
    "resubmission" never answers for a request meant differently, the belanghebbende and
    the ontvanger."""
    if not a.aanleverkenmerk:
        return None
    h = hashlib.sha256()
    parts = (
        a.sender_oin,
        a.berichtsoort,
        a.aanleverkenmerk,
        f"{a.belanghebbende.type}:{a.belanghebbende.nummer}",
        f"{a.ontvanger.type}:{a.ontvanger.nummer}" if a.ontvanger else "",
        *(d.sha256 for d in documents),
    )
    for part in parts:
        raw = part.encode("utf-8")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.digest()


# A key older than the window is taken over by the new submission (DO UPDATE ... WHERE);
# RETURNING lists exactly the keys this statement claimed.
_CLAIM = """
INSERT INTO resubmission_keys AS r (sleutel, kenmerk, tijdstempel)
SELECT * FROM unnest($1::bytea[], $2::uuid[], $3::timestamptz[])
ON CONFLICT (sleutel) DO UPDATE SET kenmerk = EXCLUDED.kenmerk, tijdstempel = EXCLUDED.tijdstempel
    WHERE r.tijdstempel < EXCLUDED.tijdstempel - make_interval(secs => $4)
RETURNING sleutel
"""

_ORIGINALS = """
SELECT sleutel, kenmerk, tijdstempel FROM resubmission_keys WHERE sleutel = ANY($1::bytea[])
"""


async def claim(
    conn: asyncpg.Connection,
    claims: Mapping[bytes, Original],
    *,
    window_seconds: float,
) -> dict[bytes, Original]:
    """Claim every key (distinct keys; call inside the intake transaction). Returns the
    original of each key already claimed within the window: those submissions are
    resubmissions. One statement when nothing is resubmitted, two otherwise."""
    pending = dict(claims)
    originals: dict[bytes, Original] = {}
    # A key lost to a row that then vanished (its envelope deleted) is claimed again.
    for _ in range(3):
        if not pending:
            break
        # one order for every transaction: two batches claiming the same keys wait for
        # each other instead of deadlocking
        keys = sorted(pending)
        rows = await conn.fetch(
            _CLAIM,
            keys,
            [pending[k].kenmerk for k in keys],
            [pending[k].tijdstempel for k in keys],
            window_seconds,
        )
        won = {bytes(r["sleutel"]) for r in rows}
        lost = [k for k in keys if k not in won]
        if not lost:
            break
        for r in await conn.fetch(_ORIGINALS, lost):
            originals[bytes(r["sleutel"])] = Original(r["kenmerk"], r["tijdstempel"])
        pending = {k: pending[k] for k in lost if k not in originals}
    else:
        if pending:
            raise RuntimeError("resubmission key could not be claimed")
    return originals


async def originals(conn: asyncpg.Connection, keys: Sequence[bytes]) -> dict[bytes, Original]:
    """The committed original of each of ``keys`` (a key whose row vanished is absent)."""
    return {
        bytes(r["sleutel"]): Original(r["kenmerk"], r["tijdstempel"])
        for r in await conn.fetch(_ORIGINALS, list(keys))
    }


async def purge(conn: asyncpg.Connection | asyncpg.Pool, *, window_seconds: float) -> int:
    """Delete keys that fell out of the window (they no longer match anything)."""
    result = await conn.execute(
        "DELETE FROM resubmission_keys WHERE sleutel IN (SELECT sleutel FROM resubmission_keys"
        " WHERE tijdstempel < now() - make_interval(secs => $1) LIMIT 10000)",
        window_seconds,
    )
    return int(result.split()[-1])
