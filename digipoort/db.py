"""PostgreSQL: the connection pool and the ordered SQL migrations."""

from __future__ import annotations

import importlib.resources
import json
from typing import Any

import asyncpg
import structlog

log = structlog.get_logger(__name__)

# Any fixed number: serialises concurrent `migrate` runs (several processes starting).
_MIGRATION_LOCK = 7_420_001


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _reset(conn: asyncpg.Connection) -> None:
    """What a connection needs when it returns to the pool. asyncpg's default (RESET ALL,
    UNLISTEN *, advisory-lock release, …) costs a round trip per release; the gateway sets
    no session state on pooled connections (LISTEN and advisory locks are held on their own
    connections and undone explicitly), so only an unfinished transaction is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(url: str, *, min_size: int = 2, max_size: int = 10) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
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
    conn: asyncpg.Connection = await asyncpg.connect(url)
    await _init_connection(conn)
    return conn


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) of every migration, in order."""
    root = importlib.resources.files("digipoort") / "migrations"
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".sql"))
    return [(name, (root / name).read_text(encoding="utf-8")) for name in names]


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply pending migrations, each in its own transaction; returns those applied."""
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
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied


async def migrate_url(url: str) -> list[str]:
    conn: Any = await asyncpg.connect(url)
    try:
        return await migrate(conn)
    finally:
        await conn.close()
