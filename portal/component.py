"""The ``portal`` component: HTTPS with mutual TLS on ``portal.port`` (default 8444).

TLS and certificate checks come from the gateway's PKI settings, exactly as for the
koppelvlakken: the handshake refuses untrusted, expired and revoked certificates, and
CRLs are re-read while running (:mod:`portal.tls`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from digipoort.app import Gateway
from digipoort.httpguard import GuardedSite, HttpGuard, HttpGuardConfig
from digipoort.xmlsafe import XmlLimits
from portal import metering
from portal.app import application
from portal.context import Context
from portal.tls import PortalTls
from portal.validation import Validator
from validators.pool import shared_pool
from validators.profileset import ProfileSet
from validators.schemas import SchemaRegistry

log = structlog.get_logger(__name__)


def build_context(gateway: Gateway) -> Context:
    s = gateway.settings
    assert gateway.pool and gateway.registry and gateway.store
    return Context(
        settings=s,
        pool=gateway.pool,
        store=gateway.store,
        registry_holder=gateway.registry,
        intake=gateway.intake,
        validator=Validator(
            SchemaRegistry([s.config_dir / "xsd"]),
            XmlLimits(max_bytes=s.limits.max_document_bytes, max_depth=s.limits.max_xml_depth),
            profiles=lambda: _profiles(gateway),
        ),
    )


def _profiles(gateway: Gateway) -> ProfileSet:
    """The validation profiles, as the validator component starts them."""
    s = gateway.settings
    assert gateway.registry is not None
    profiles = ProfileSet(s.resolve(s.validation.artefacts_dir), shared_pool(s.validation.workers))
    profiles.refresh(gateway.registry.current)
    gateway.registry.on_change(profiles.refresh)
    return profiles


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    tls = PortalTls(s)
    ctx = build_context(gateway)
    app = application(ctx, tls.verifier)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    # header deadline, per-IP connection limit, HTTP-layer refusals logged and counted
    site = GuardedSite(
        runner,
        s.portal.host,
        s.portal.port,
        guard=HttpGuard("portal", HttpGuardConfig()),
        ssl_context=tls.context,
        reuse_port=True,
    )
    await site.start()
    await tls.start()
    closing = asyncio.get_running_loop().create_task(metering.closer(ctx))
    log.info("portal.listening", host=s.portal.host, port=s.portal.port)

    async def stop() -> None:
        closing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        await tls.stop()
        await runner.cleanup()
        await ctx.validator.close()

    return stop
