"""Re-push: an operator gives a push delivery that ended in 410 a fresh start.

The delivery row goes back to ``pending`` with no attempts and a new retry window (from
now); the deliverers are woken at once. Only push deliveries (``wus``, ``smtp``) that
failed can be re-pushed; anything else is left untouched (returns False). The history
keeps the old 420/410; the new attempts add 420s and, when it works, 400.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from routing.afleveren.deliverer import NOTIFY_CHANNEL, PUSH_CHANNELS


async def repush_failed(pool: asyncpg.Pool, kenmerk: UUID, recipient_oin: str) -> bool:
    """Reset a failed push delivery to pending; True if there was one."""
    async with pool.acquire() as conn, conn.transaction():
        done = await conn.fetchval(
            "UPDATE deliveries SET state = 'pending', attempts = 0, next_attempt_at = NULL,"
            " last_error = NULL, created_at = now(), updated_at = now()"
            " WHERE kenmerk = $1 AND recipient_oin = $2 AND state = 'failed'"
            " AND channel = ANY($3::text[]) RETURNING 1",
            kenmerk,
            recipient_oin,
            list(PUSH_CHANNELS),
        )
        if done:
            await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, recipient_oin)
    return bool(done)
