"""The ``ftp`` component: explicit FTPS (RFC 4217) with client certificates.

Started by the gateway (``digipoort serve --components intake,ftp``); needs the intake
component in the same process. Listens on ``ftp.host:ftp.port``; passive data
connections on ``ftp.passive_port_min..max``. Revocation comes from the process's
revocation service; a maintenance task removes partial uploads older than
``ftp.partial_ttl_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from adapters.ftp import metrics
from adapters.ftp.commands import MAX_LINE, reply
from adapters.ftp.partials import PartialArea
from adapters.ftp.passive import PassivePorts
from adapters.ftp.session import Session
from adapters.ftp.sessionbase import FtpShared
from digipoort import archive
from digipoort.app import LISTEN_BACKLOG, Gateway
from digipoort.pki.wiring import participant_verifier, revocation_service, server_context

log = structlog.get_logger(__name__)

MAINTENANCE_INTERVAL = 60.0


def expire_partials(shared: FtpShared) -> int:
    """Remove expired partial uploads of every account; returns how many."""
    base = shared.root / "partial"
    if not base.is_dir():
        return 0
    n = 0
    for account in base.iterdir():
        if account.is_dir() and not account.is_symlink():
            n += PartialArea(shared.root, account.name).expire(shared.config.partial_ttl_seconds)
    return n


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    if gateway.intake is None:
        raise RuntimeError("the ftp component needs the intake component in this process")
    assert gateway.pool is not None and gateway.registry is not None and gateway.store
    revocation = revocation_service(s)
    await revocation.start()
    verifier = participant_verifier(s, port="ftp")
    # Client certificate optional in the handshake so that a missing one gets a clear 530
    # reply; one that is sent must chain in the handshake, and the verifier checks it
    # (validity, revocation, OIN) before USER is accepted — a revoked one gets 530.
    context = server_context(s, "ftp", require_client_cert=False)
    cfg = s.ftp
    shared = FtpShared(
        config=cfg,
        limits=s.limits,
        ssl_context=context,
        verifier=verifier,
        registry=gateway.registry,
        intake=gateway.intake,
        pool=gateway.pool,
        store=gateway.store,
        root=s.resolve(cfg.root_dir),
        ports=PassivePorts(cfg.host, cfg.passive_port_min, cfg.passive_port_max),
        grote_berichten=s.grote_berichten,
        public_url=s.wus.public_url,
        archive=archive.recorder(s),
    )
    shared.root.mkdir(parents=True, exist_ok=True)
    sessions: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(sessions) >= cfg.max_sessions:
            metrics.REFUSED.labels("too_many_sessions").inc()
            log.info("ftp.refused", code=421, reason="too_many_sessions")
            writer.write(reply(421, "Too many sessions, try again later"))
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        sessions.add(task)
        metrics.ACTIVE_SESSIONS.inc()
        try:
            await Session(shared, reader, writer).run()
        finally:
            metrics.ACTIVE_SESSIONS.dec()
            sessions.discard(task)

    server = await asyncio.start_server(
        handle, cfg.host, cfg.port, limit=MAX_LINE + 2, reuse_address=True, backlog=LISTEN_BACKLOG
    )
    log.info("ftp.listening", host=cfg.host, port=cfg.port,
             passive=f"{cfg.passive_port_min}-{cfg.passive_port_max}")  # fmt: skip

    async def maintenance() -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            try:
                expired = await asyncio.to_thread(expire_partials, shared)
                if expired:
                    metrics.PARTIALS_EXPIRED.inc(expired)
                    log.info("ftp.partials_expired", count=expired)
            except Exception as exc:
                log.warning("ftp.maintenance_failed", error=repr(exc))

    task = asyncio.get_running_loop().create_task(maintenance())

    async def stop() -> None:
        task.cancel()
        server.close()
        for t in list(sessions):
            t.cancel()
        await asyncio.gather(task, *sessions, return_exceptions=True)
        with contextlib.suppress(Exception):
            await server.wait_closed()
        await revocation.stop()

    return stop
