"""The registry in PostgreSQL: audited loading from config, snapshots, change notification."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from digipoort.registry import Berichtsoort, Participant, Registry, RegistryConfig

log = structlog.get_logger(__name__)
CHANNEL = "digipoort_registry"


def _participant_row(p: Participant) -> dict[str, Any]:
    return {"name": p.name, "roles": sorted(p.roles), "aflever": p.aflever.model_dump()}


async def load_config(conn: asyncpg.Connection, config: RegistryConfig, *, actor: str) -> list[str]:
    """Upsert participants and berichtsoorten from config. Idempotent: unchanged entries are
    left alone and not audited. Returns a line per change (also written to the audit)."""
    changes: list[str] = []
    async with conn.transaction():
        current_p = {
            r["oin"]: {"name": r["name"], "roles": sorted(r["roles"]), "aflever": r["aflever"]}
            for r in await conn.fetch("SELECT oin, name, roles, aflever FROM participants")
        }
        for p in config.participants:
            row = _participant_row(p)
            before = current_p.get(p.oin)
            if before == row:
                continue
            await conn.execute(
                "INSERT INTO participants (oin, name, roles, aflever) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (oin) DO UPDATE SET name = $2, roles = $3, aflever = $4,"
                " active = true, updated_at = now()",
                p.oin,
                p.name,
                row["roles"],
                row["aflever"],
            )
            action = "participant.create" if before is None else "participant.update"
            await _audit(conn, actor, action, p.oin, {"before": before, "after": row})
            changes.append(f"{action} {p.oin}")
        current_b = {
            r["name"]: r["definition"]
            for r in await conn.fetch("SELECT name, definition FROM berichtsoorten")
        }
        for b in config.berichtsoorten:
            definition = b.model_dump(mode="json")
            before = current_b.get(b.name)
            if before == definition:
                continue
            await conn.execute(
                "INSERT INTO berichtsoorten (name, definition) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET definition = $2, active = true,"
                " updated_at = now()",
                b.name,
                definition,
            )
            action = "berichtsoort.create" if before is None else "berichtsoort.update"
            await _audit(conn, actor, action, b.name, {"before": before, "after": definition})
            changes.append(f"{action} {b.name}")
        if changes:
            await conn.execute("SELECT pg_notify($1, 'changed')", CHANNEL)
    return changes


async def _audit(
    conn: asyncpg.Connection, actor: str, action: str, subject: str, detail: dict[str, Any]
) -> None:
    await conn.execute(
        "INSERT INTO registry_audit (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        json.loads(json.dumps(detail, default=str)),
    )


async def snapshot(conn: asyncpg.Connection | asyncpg.Pool) -> Registry:
    participants = [
        Participant(oin=r["oin"], name=r["name"], roles=r["roles"], aflever=r["aflever"])
        for r in await conn.fetch("SELECT oin, name, roles, aflever FROM participants WHERE active")
    ]
    soorten = [
        Berichtsoort.model_validate(r["definition"])
        for r in await conn.fetch("SELECT definition FROM berichtsoorten WHERE active")
    ]
    # Copy recipients set by the flow owner (``digipoort flows copies``) override the
    # config's: once set, ``load_config`` cannot undo them.
    owner_copies = {
        r["berichtsoort"]: list(r["copies"])
        for r in await conn.fetch("SELECT berichtsoort, copies FROM flow_copies")
    }
    soorten = [
        b.model_copy(update={"copies": owner_copies[b.name]}) if b.name in owner_copies else b
        for b in soorten
    ]
    return Registry.build(participants, soorten)


class RegistryHolder:
    """The current registry snapshot, refreshed when another process changes it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._conn: asyncpg.Connection | None = None
        self.current = Registry.build([], [])
        self._listeners: list[Callable[[Registry], None]] = []
        self._reload_task: asyncio.Task[None] | None = None

    def on_change(self, callback: Callable[[Registry], None]) -> None:
        self._listeners.append(callback)

    async def start(self) -> None:
        await self.reload()
        self._conn = await self._pool.acquire()
        await self._conn.add_listener(CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self.reload())

    async def reload(self) -> None:
        self.current = await snapshot(self._pool)
        log.info(
            "registry loaded",
            participants=len(self.current.participants),
            berichtsoorten=len(self.current.berichtsoorten),
        )
        for cb in self._listeners:
            cb(self.current)

    async def stop(self) -> None:
        if self._conn is not None:
            await self._conn.remove_listener(CHANNEL, self._notified)
            await self._pool.release(self._conn)
            self._conn = None
