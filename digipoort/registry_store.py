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
    """The current registry snapshot, refreshed when another process changes it.

    A dedicated pooled connection LISTENs on ``digipoort_registry``. When that connection
    is lost (a database restart, a network cut; noticed at once through asyncpg's
    termination callback, or by a ``SELECT 1`` every ``check_interval`` seconds), it is
    re-established as soon as the database answers and the registry is reloaded right
    after the LISTEN is in place, so changes made while disconnected are picked up too.
    :attr:`listening` says whether changes reach this process right now (``/readyz``).
    """

    def __init__(
        self, pool: asyncpg.Pool, *, retry_interval: float = 0.5, check_interval: float = 5.0
    ) -> None:
        self._pool = pool
        self._conn: asyncpg.pool.PoolConnectionProxy | None = None
        self.current = Registry.build([], [])
        self._listeners: list[Callable[[Registry], None]] = []
        self._reload_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._retry_interval = retry_interval
        self._check_interval = check_interval
        self.listening = False

    def on_change(self, callback: Callable[[Registry], None]) -> None:
        self._listeners.append(callback)

    async def start(self) -> None:
        await self._listen()
        self._watch_task = asyncio.get_running_loop().create_task(self._watch())

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, then load the registry (in that order: a
        change committed in between is then both loaded and notified, never missed)."""
        conn = await self._pool.acquire()
        try:
            await conn.add_listener(CHANNEL, self._notified)
            conn.add_termination_listener(self._terminated)
            await self.reload()
        except BaseException:
            await self._release(conn)
            raise
        self._conn = conn
        self._lost.clear()
        self.listening = True

    def _terminated(self, *_: object) -> None:
        self._lost.set()

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._lost.wait(), timeout=self._check_interval)
            except TimeoutError:
                if await self._alive():
                    continue
            self.listening = False
            log.warning("registry LISTEN connection lost; re-establishing")
            if self._conn is not None:
                conn, self._conn = self._conn, None
                await self._release(conn)
            await self._relisten()

    async def _alive(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            async with asyncio.timeout(2):
                await conn.fetchval("SELECT 1")
        except Exception:
            return False
        return True

    async def _relisten(self) -> None:
        while True:
            try:
                await self._listen()
            except Exception as exc:
                log.debug("registry LISTEN not yet possible", error=repr(exc))
                # a database restart leaves dead connections in the pool: replace them
                await self._pool.expire_connections()
                await asyncio.sleep(self._retry_interval)
            else:
                log.warning("registry LISTEN re-established; registry reloaded")
                return

    async def _release(self, conn: asyncpg.pool.PoolConnectionProxy) -> None:
        try:
            if not conn.is_closed():
                conn.remove_termination_listener(self._terminated)
                await conn.remove_listener(CHANNEL, self._notified)
        except Exception as exc:
            log.debug("registry connection cleanup failed", error=repr(exc))
        try:
            await self._pool.release(conn, timeout=5)
        except Exception as exc:
            log.debug("registry connection release failed", error=repr(exc))

    def _notified(self, *_: object) -> None:
        if self._reload_task is None or self._reload_task.done():
            self._reload_task = asyncio.get_running_loop().create_task(self._reload_logged())

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception as exc:  # the LISTEN watcher reloads once the database is back
            log.error("registry reload failed", error=repr(exc))

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
        self.listening = False
        for task in (self._watch_task, self._reload_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await self._release(conn)
