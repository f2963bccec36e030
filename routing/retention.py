"""Payload retention: remove stored payloads nothing needs any more.

A payload in the store (content-addressed, deduplicated) is removed only when every
document that uses it belongs to an envelope that is finished — refused, or routed with
no delivery still pending — submitted longer ago than the retention period, and, where
it was delivered by reference, every recipient has fetched it completely longer ago than
the retention period or the reference has expired. Never before. Small documents live in
PostgreSQL and are not touched. Runs as the ``retention`` component.

The same component keeps the monthly history partitions (digipoort/partitions.py): at
start and daily it creates the partitions of the coming months and purges the months
whose every envelope is past its berichtsoort's retention (history.* config keys).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog
from prometheus_client import Counter

from digipoort import metrics, partitions
from digipoort.app import Gateway
from digipoort.config import HistoryConfig
from digipoort.payloads import PayloadStore

log = structlog.get_logger(__name__)

REMOVED = Counter("digipoort_payloads_removed_total", "Payloads removed by retention.")

FINAL_DELIVERY_STATES = ("queued", "delivered", "failed", "discarded")

_ELIGIBLE = """
WITH docs AS (
    SELECT d.sha256, e.tijdstempel_aangeleverd AS submitted,
        e.tijdstempel_aangeleverd < now() - make_interval(secs => $1)
        AND (
            e.stage = 'geweigerd'
            OR (e.stage = 'gerouteerd' AND NOT EXISTS (
                SELECT 1 FROM deliveries x WHERE x.kenmerk = d.kenmerk
                AND x.state <> ALL($2::text[])))
        )
        AND (
            r.kenmerk IS NULL
            OR r.expires_at < now()
            OR NOT EXISTS (
                SELECT 1 FROM deliveries x WHERE x.kenmerk = d.kenmerk
                AND NOT EXISTS (
                    SELECT 1 FROM gb_fetches f
                    WHERE f.kenmerk = d.kenmerk AND f.seq = d.seq
                      AND f.recipient_oin = x.recipient_oin
                      AND f.first_complete_at < now() - make_interval(secs => $1)))
        ) AS done
    FROM documents d
    JOIN envelopes e USING (kenmerk)
    LEFT JOIN gb_references r ON r.kenmerk = d.kenmerk AND r.seq = d.seq
    WHERE d.data IS NULL
)
SELECT docs.sha256 FROM docs
LEFT JOIN payload_removals pr ON pr.sha256 = docs.sha256
GROUP BY docs.sha256
HAVING bool_and(done) AND max(submitted) > coalesce(max(pr.removed_at), '-infinity')
LIMIT $3
"""


async def sweep_once(
    pool: asyncpg.Pool,
    store: PayloadStore,
    *,
    retention_seconds: float,
    grace_seconds: float = 3600.0,
    limit: int = 500,
) -> int:
    rows = await pool.fetch(_ELIGIBLE, retention_seconds, list(FINAL_DELIVERY_STATES), limit)
    removed = 0
    for row in rows:
        sha = row["sha256"]
        # A submission that is storing the same content right now refreshed the file's
        # mtime (deduplication) before its envelope is committed: leave such files.
        age = await store.age_seconds(sha)
        if age is not None and age < grace_seconds:
            continue
        await store.delete(sha)
        await pool.execute(
            "INSERT INTO payload_removals (sha256) VALUES ($1)"
            " ON CONFLICT (sha256) DO UPDATE SET removed_at = now()",
            sha,
        )
        removed += 1
    if removed:
        REMOVED.inc(removed)
        log.info("payloads removed by retention", count=removed)
    return removed


async def maintain_history(
    pool: asyncpg.Pool, store: PayloadStore, config: HistoryConfig
) -> list[partitions.PurgeResult]:
    """Create the coming months' partitions; purge expired months (exported first when
    history.export_dir is set). Skipped while another process runs it."""
    purged: list[partitions.PurgeResult] = []
    async with pool.acquire() as conn:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", partitions.HISTORY_LOCK):
            return purged
        try:
            await partitions.ensure_ahead(
                conn, ahead=config.months_ahead, lock_timeout_ms=config.lock_timeout_ms
            )
            await partitions.analyze_parents(conn)
            if not config.purge:
                return purged
            policy = partitions.RetentionPolicy.from_config(config)
            for state in await partitions.expired(conn, policy):
                export = None
                if config.export_dir is not None:
                    export = await partitions.export_month(conn, state.name, config.export_dir)
                purged.append(
                    await partitions.purge_month(
                        conn,
                        state.name,
                        store,
                        export_path=export,
                        lock_timeout_ms=config.lock_timeout_ms,
                    )
                )
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", partitions.HISTORY_LOCK)
    return purged


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    assert gateway.pool is not None and gateway.store is not None
    pool, store = gateway.pool, gateway.store
    retention = gateway.settings.grote_berichten.retention_hours * 3600
    stopping = asyncio.Event()
    history = gateway.settings.history
    if history.export_dir is not None:
        history = history.model_copy(
            update={"export_dir": gateway.settings.resolve(history.export_dir)}
        )

    async def history_loop() -> None:
        while not stopping.is_set():
            pause = 24 * 3600
            try:
                await maintain_history(pool, store, history)
            except Exception as exc:
                # counted and alerted (DigipoortHistoryMaintenanceFailing); retried hourly
                metrics.HISTORY_MAINTENANCE_FAILURES.inc()
                log.error("history maintenance failed", error=str(exc))
                pause = 3600
            try:
                await asyncio.wait_for(stopping.wait(), timeout=pause)
            except TimeoutError:
                pass

    async def loop() -> None:
        while not stopping.is_set():
            try:
                await sweep_once(pool, store, retention_seconds=retention)
            except Exception as exc:
                log.error("retention sweep failed", error=str(exc))
            try:
                await asyncio.wait_for(stopping.wait(), timeout=300)
            except TimeoutError:
                pass

    task = asyncio.get_running_loop().create_task(loop())
    history_task = asyncio.get_running_loop().create_task(history_loop())

    async def stop() -> None:
        stopping.set()
        await task
        await history_task

    return stop
