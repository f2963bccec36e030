"""The sweeper: republishes committed envelopes whose hand-off was never confirmed.

Intake marks an envelope ``handed_off`` after RabbitMQ confirmed its work item (in its next
group-commit statement, or on its own within a second on a quiet gateway). Anything
older than the grace period that is still unmarked (a crash or broker failure between
commit and confirm) is published again; the stages are idempotent, so a duplicate work
item costs a little work and nothing else.
"""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from digipoort import metrics, resubmission
from digipoort.broker import VALIDATE, Broker
from digipoort.envelopestore import mark_handed_off

log = structlog.get_logger(__name__)


async def sweep_once(
    pool: asyncpg.Pool, broker: Broker, *, grace_seconds: float, limit: int = 500
) -> int:
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT kenmerk FROM envelopes WHERE NOT handed_off AND stage = 'aangeboden'"
            " AND tijdstempel_aangeleverd < now() - make_interval(secs => $1)"
            " ORDER BY tijdstempel_aangeleverd LIMIT $2 FOR UPDATE SKIP LOCKED",
            grace_seconds,
            limit,
        )
        kenmerken = [r["kenmerk"] for r in rows]
        if not kenmerken:
            return 0
        results = await asyncio.gather(
            *(broker.publish_work(VALIDATE, k) for k in kenmerken), return_exceptions=True
        )
        done = [k for k, r in zip(kenmerken, results, strict=True) if r is None]
        await mark_handed_off(conn, done)
    metrics.SWEEPER_REPUBLISHED.inc(len(done))
    log.warning("sweeper republished envelopes", count=len(done), failed=len(kenmerken) - len(done))
    return len(done)


async def run(
    pool: asyncpg.Pool,
    broker: Broker,
    *,
    grace_seconds: float,
    interval: float,
    stopping: asyncio.Event,
    resubmission_window_seconds: float = 24 * 3600.0,
    limit: int = 500,
) -> None:
    """Sweep every ``interval`` seconds (30 by default: nothing polls busily) until
    ``stopping`` is set; a full batch is followed by the next at once."""
    while not stopping.is_set():
        try:
            # a full batch means more are waiting (a broker outage ended): go on at once
            while await sweep_once(pool, broker, grace_seconds=grace_seconds, limit=limit) >= (
                limit
            ):
                if stopping.is_set():
                    return
            # resubmission keys that fell out of the window match nothing any more
            await resubmission.purge(pool, window_seconds=resubmission_window_seconds)
        except Exception as exc:
            log.error("sweep failed", error=str(exc))
        try:
            await asyncio.wait_for(stopping.wait(), timeout=interval)
        except TimeoutError:
            pass
