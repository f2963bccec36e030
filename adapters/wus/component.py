"""The ``wus`` component: HTTPS with mutual TLS serving the WUS endpoints."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import timedelta

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from adapters.wus import store
from adapters.wus.server import WusService
from digipoort.app import Gateway, shares_ports
from digipoort.config import Settings
from digipoort.httpguard import GuardedSite, HttpGuard, HttpGuardConfig
from digipoort.pki import CertificateVerifier
from digipoort.pki.wiring import participant_verifier as _participant_verifier
from digipoort.pki.wiring import revocation_service, server_context
from routing.download import Download

log = structlog.get_logger(__name__)

#: How often stale replay-cache entries are purged (seconds). CRLs and OCSP answers are
#: refreshed by the process's revocation service (``pki.revocation.refresh_seconds``).
MAINTENANCE_INTERVAL = 60.0


def load_signing_identity(
    cert_file: object, key_file: object
) -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    with open(str(cert_file), "rb") as fh:
        certificate = x509.load_pem_x509_certificates(fh.read())[0]
    with open(str(key_file), "rb") as fh:
        key = load_pem_private_key(fh.read(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{key_file}: the gateway signing key must be RSA")
    return key, certificate


def participant_verifier(s: Settings) -> CertificateVerifier:
    """Verifies participants' certificates (chain, revocation, OIN) per ``settings.pki``."""
    return _participant_verifier(s, port="wus")


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool is not None and gateway.registry is not None
    pki = s.pki
    revocation = revocation_service(s)
    await revocation.start()
    verifier = participant_verifier(s)
    ssl_context = server_context(s, "wus")
    key, cert = load_signing_identity(s.resolve(pki.cert_file), s.resolve(pki.key_file))
    service = WusService(
        s,
        pool=gateway.pool,
        registry=gateway.registry,
        intake=gateway.intake,
        verifier=verifier,
        signing_key=key,
        signing_cert=cert,
        conformance_mode=s.wus.conformance,
        payloads=gateway.store,
    )
    app = service.application()
    # Grote Berichten downloads are served on the WUS HTTPS port (same mutual TLS)
    assert gateway.store is not None
    Download(gateway.pool, gateway.store, verifier).add_routes(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    guard = HttpGuard(
        "wus",
        HttpGuardConfig(
            header_timeout=s.wus.header_timeout_seconds,
            idle_timeout=s.wus.idle_timeout_seconds,
            max_per_ip=s.wus.max_connections_per_ip,
        ),
    )
    site = GuardedSite(
        runner,
        s.wus.host,
        s.wus.port,
        guard=guard,
        ssl_context=ssl_context,
        reuse_port=shares_ports(),
    )
    await site.start()
    log.info("wus.listening", host=s.wus.host, port=s.wus.port, public_url=s.wus.public_url)

    async def maintenance() -> None:
        keep = timedelta(seconds=2 * s.wus.max_clock_skew_seconds)
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            try:
                await store.purge_message_ids(gateway.pool, keep)  # type: ignore[arg-type]
                await store.purge_returned(gateway.pool)  # type: ignore[arg-type]
            except Exception as exc:
                log.warning("wus.maintenance_failed", error=repr(exc))

    task = asyncio.get_running_loop().create_task(maintenance())

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await runner.cleanup()
        await revocation.stop()

    return stop

