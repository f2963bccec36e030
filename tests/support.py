"""Test support: isolated environments (own database and vhost), waiting on conditions."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import aio_pika
import asyncpg

from digipoort import db, provision, registry_store
from digipoort.app import Gateway
from digipoort.broker import aflever_queue
from digipoort.config import Settings, load_settings
from digipoort.devenv import (  # noqa: F401 - re-exported for the tests
    ALFA,
    BELASTINGDIENST,
    BETA,
    CBS,
    DNB,
    DOUANE,
    HBAG,
    RIJKSDIENST_INKOOP,
    find_standards,
    link_sample_artefacts,
    render_config,
)
from digipoort.envelope import Aanlevering, Document, Identiteit
from digipoort.status import Status
from digipoort.statusstore import history

T = TypeVar("T")

PG_ADMIN = os.environ.get("DIGIPOORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("DIGIPOORT_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
MGMT = os.environ.get("DIGIPOORT_TEST_MGMT", "http://guest:guest@127.0.0.1:15672")

SAMPLES = Path(__file__).resolve().parent.parent / "validators" / "samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, what: str = "condition"
) -> T:
    """Poll an async predicate until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.2)


@dataclass
class Env:
    """One isolated gateway environment: its own database, vhost and config file."""

    name: str
    dir: Path
    pki: Path
    db_url: str
    amqp_url: str
    config_path: Path
    settings: Settings
    gateways: list[Gateway] = field(default_factory=list)
    _conn: asyncpg.Connection | None = None

    async def conn(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await db.connect(self.db_url)
        return self._conn

    async def start_gateway(self, components: tuple[str, ...] | None = None, **kw: Any) -> Gateway:
        from digipoort.app import all_components

        gw = Gateway(self.settings, components=components or all_components())
        await gw.start(**kw)
        self.gateways.append(gw)
        return gw

    async def history(self, kenmerk: UUID) -> list[Status]:
        return await history(await self.conn(), kenmerk)

    async def wait_status(
        self, kenmerk: UUID, code: str, *, recipient: str | None = None, timeout: float = 20.0
    ) -> list[Status]:
        async def check() -> list[Status] | None:
            h = await self.history(kenmerk)
            hit = any(
                s.code == code and (recipient is None or s.recipient_oin == recipient) for s in h
            )
            return h if hit else None

        return await wait_for(check, timeout=timeout, what=f"status {code} for {kenmerk}")

    async def queue_messages(
        self, oin: str, *, expect: int, timeout: float = 20.0, settle: float = 0.0
    ) -> list[aio_pika.abc.AbstractIncomingMessage]:
        """Consume (and ack) messages from a recipient queue until ``expect`` arrived;
        then keep listening ``settle`` seconds more to catch unexpected extra copies."""
        conn = await aio_pika.connect(self.amqp_url)
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        try:
            ch = await conn.channel()
            q = await ch.get_queue(aflever_queue(oin), ensure=False)
            deadline = time.monotonic() + timeout
            while len(got) < expect and time.monotonic() < deadline:
                msg = await q.get(fail=False, no_ack=True)
                if msg is None:
                    await asyncio.sleep(0.02)
                    continue
                got.append(msg)
            end = time.monotonic() + settle
            while time.monotonic() < end:
                msg = await q.get(fail=False, no_ack=True)
                if msg is None:
                    await asyncio.sleep(0.05)
                else:
                    got.append(msg)
        finally:
            await conn.close()
        return got

    async def queue_depth(self, name: str) -> int:
        conn = await aio_pika.connect(self.amqp_url)
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(name, passive=True)
            return int(q.declaration_result.message_count or 0)
        finally:
            await conn.close()

    async def stop(self) -> None:
        for gw in reversed(self.gateways):
            await gw.stop()
        self.gateways.clear()
        if self._conn is not None:
            await self._conn.close()


async def set_aflever(
    env: Env, oin: str, kind: str, url: str, *, retry_for_hours: float | None = None
) -> None:
    """Give recipient ``oin`` a push endpoint (registry change, loaded like an operator's)."""
    from digipoort.registry import AfleverEndpoint

    for p in env.settings.registry.participants:
        if p.oin == oin:
            p.aflever = AfleverEndpoint(kind=kind, url=url, retry_for_hours=retry_for_hours)
    await registry_store.load_config(await env.conn(), env.settings.registry, actor="tests")


async def create_env(
    base: Path,
    pki: Path,
    template_db: str,
    *,
    pg_admin: str = PG_ADMIN,
    amqp: str = AMQP,
    mgmt: str = MGMT,
) -> Env:
    """An environment on the machine's servers, or on servers of the test's own
    (tests/servers.py) when their URLs are given."""
    name = f"dptest_{uuid.uuid4().hex[:12]}"
    directory = base / name
    directory.mkdir(parents=True)
    (directory / "pki").symlink_to(pki)
    if (standards := find_standards()) is not None:  # validation artefacts (issue 13)
        link_sample_artefacts(directory / "standards", standards)
    admin = await asyncpg.connect(f"{pg_admin}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    await provision.Management(mgmt).ensure_vhost(name)
    db_url = f"{pg_admin}/{name}"
    amqp_url = f"{amqp}/{name}"
    passive = 30000 + (uuid.uuid4().int % 1500) * 20  # a random block of 20 passive ports
    config = render_config(
        database_url=db_url,
        broker_url=amqp_url,
        management_url=mgmt,
        http_port=free_port(),
        wus_port=free_port(),
        smtp_port=free_port(),
        pop3_port=free_port(),
        ftp_port=free_port(),
        ftp_passive_min=passive,
        ftp_passive_max=passive + 19,
    )
    config_path = directory / "digipoort.toml"
    config_path.write_text(config, encoding="utf-8")
    settings = load_settings(config_path)
    # quick sweeps so crash tests don't wait long
    settings.intake.sweep_grace_seconds = 1.0
    settings.intake.sweep_interval_seconds = 0.5
    settings.broker.retry_backoff_seconds = 0.05
    conn = await db.connect(db_url)
    try:
        await registry_store.load_config(conn, settings.registry, actor="tests")
    finally:
        await conn.close()
    return Env(name, directory, pki, db_url, amqp_url, config_path, settings)


async def destroy_env(env: Env) -> None:
    await env.stop()
    await provision.drop_database(env.db_url)
    await provision.Management(MGMT).delete_vhost(env.name)


@contextlib.asynccontextmanager
async def throwaway_env(prefix: str = "dpbench") -> AsyncIterator[tuple[Env, Path]]:
    """A complete environment with its own test PKI, template database, database and
    vhost, all removed afterwards (benchmarks use it outside pytest)."""
    from digipoort.devenv import SAMPLE_PARTICIPANTS
    from digipoort.pki.devpki import DevParticipant, create_dev_pki

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp) / "pki"
        create_dev_pki(pki, [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS])
        tpl = f"{prefix}_tpl_{os.getpid()}"
        await create_template(tpl)
        try:
            env = await create_env(Path(tmp), pki, tpl)
            try:
                yield env, pki
            finally:
                await destroy_env(env)
        finally:
            await provision.drop_database(f"{PG_ADMIN}/{tpl}")


async def create_template(name: str, *, pg_admin: str = PG_ADMIN) -> None:
    admin = await asyncpg.connect(f"{pg_admin}/postgres")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    await db.migrate_url(f"{pg_admin}/{name}")


def unique_aanleverkenmerk(prefix: str = "test") -> str:
    """An aanleverkenmerk no other submission shares (at most 40 characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def aanlevering(
    berichtsoort: str = "Omzetbelasting",
    *,
    sender: str = ALFA,
    content: bytes | None = None,
    sample: str | None = "omzetbelasting.xml",
    ontvanger: str | None = None,
    koppelvlak: str = "wus",
    aanleverkenmerk: str | None = None,
    bijlagen: tuple[Document, ...] = (),
) -> Aanlevering:
    """A submission; a unique aanleverkenmerk unless one is given (two calls with the same
    aanleverkenmerk and document are a resubmission: docs/reliability.md)."""
    if content is None:
        assert sample is not None
        content = (SAMPLES / sample).read_bytes()
    return Aanlevering(
        sender_oin=sender,
        koppelvlak=koppelvlak,
        berichtsoort=berichtsoort,
        belanghebbende=Identiteit(sender, "OIN"),
        rol_belanghebbende="Bedrijf",
        inhoud=Document("text/xml", "bericht.xml", content=content),
        bijlagen=bijlagen,
        aanleverkenmerk=aanleverkenmerk or unique_aanleverkenmerk(),
        ontvanger=Identiteit(ontvanger, "OIN") if ontvanger else None,
    )
