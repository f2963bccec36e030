"""PostgreSQL: the connection pool, the ordered SQL migrations and planner statistics.

Statistics (issue 15 item 7): ``setup`` and ``db migrate`` (:func:`migrate_url`) ANALYZE the
hot tables; a process start (:func:`migrate`) does so when it applied a migration or a hot
table was never analyzed. A plan made from no statistics or stale ones can scan a whole
table per envelope; the ``opsmetrics`` component exports the statistics' age and the
dead-tuple ratio, and ``DigipoortStaleStatistics`` warns.

``database.url`` may name several hosts (a primary and its standbys,
``postgresql://u@db1:5432,db2:5432/digipoort?target_session_attrs=read-write``): asyncpg
tries them in order and keeps the first that takes writes. A multi-host URL without
``target_session_attrs`` gets ``read-write`` here, so the gateway never writes to (or
waits on) a standby. After a failover the connections to the old primary fail (an
outage: the stages wait, ``/readyz`` expires the pool's connections) and every new one
goes to the new primary. Durable accept across a failover needs synchronous replication
(docs/reliability.md, "PostgreSQL failover").
"""

from __future__ import annotations

import importlib.resources
import json
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any fixed number: serialises concurrent `migrate` runs (several processes starting).
_MIGRATION_LOCK = 7_420_001
#: The tables every envelope writes to or reads from: their plans must not go stale.
HOT_TABLES = (
    "envelopes",
    "documents",
    "statuses",
    "deliveries",
    "resubmission_keys",
    "wus_message_ids",
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset(conn: asyncpg.Connection) -> None:
    """What a connection needs when it returns to the pool. asyncpg's default (RESET ALL,
    UNLISTEN *, advisory-lock release, …) costs a round trip per release; the gateway sets
    no session state on pooled connections (LISTEN and advisory locks are held on their own
    connections and undone explicitly), so only an unfinished transaction is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


def multi_host(url: str) -> bool:
    """Whether ``url`` names more than one host."""
    return "," in urlsplit(url).netloc


def _session_attrs(url: str) -> dict[str, Any]:
    """``target_session_attrs=read-write`` for a multi-host URL that does not say."""
    if not multi_host(url) or "target_session_attrs" in parse_qs(urlsplit(url).query):
        return {}
    if os.environ.get("PGTARGETSESSIONATTRS"):
        return {}
    return {"target_session_attrs": "read-write"}


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        **_session_attrs(url),
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_reset,
        command_timeout=60,
    )
    assert pool is not None
    return pool


async def connect(url: str) -> asyncpg.Connection:
    """A single connection with the same codecs as the pool's."""
    conn: asyncpg.Connection = await asyncpg.connect(url, **_session_attrs(url))
    await _init_connection(conn)
    return conn


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in order."""
    root = importlib.resources.files("digipoort") / "migrations"
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".sql"))
    return [(name, (root / name).read_text(encoding="utf-8")) for name in names]


async def analyze(conn: asyncpg.Connection, tables: tuple[str, ...] = HOT_TABLES) -> None:
    """Gather the planner statistics of ``tables`` (existing ones; one statement)."""
    present = [
        str(r["relname"])
        for r in await conn.fetch(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relname = ANY($1)"
            " AND relnamespace = current_schema()::regnamespace",
            list(tables),
        )
    ]
    if present:
        await conn.execute("ANALYZE " + ", ".join(f'"{t}"' for t in sorted(present)))
        log.info("statistics gathered", tables=sorted(present))


async def _never_analyzed(conn: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) > 0 FROM pg_stat_user_tables WHERE relname = ANY($1)"
            " AND schemaname = current_schema()"
            " AND last_analyze IS NULL AND last_autoanalyze IS NULL",
            list(HOT_TABLES),
        )
    )


async def migrate(conn: asyncpg.Connection, *, always_analyze: bool = False) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns those applied.
    Then ANALYZE the hot tables if ``always_analyze``, if a migration was applied, or if
    one of them was never analyzed."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in migration_files():
            if name in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)
            log.info("migration applied", migration=name)
            applied.append(name)
        if always_analyze or applied or await _never_analyzed(conn):
            await analyze(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def migrate_url(url: str) -> list[str]:
    conn: Any = await asyncpg.connect(url)
    try:
        return await migrate(conn, always_analyze=True)
    finally:
        await conn.close()
