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

from adapters.smtp.relay import SmtpRelay
from adapters.wus import store
from adapters.wus.aflever_client import AfleverClient
from adapters.wus.server import WusService
from digipoort.app import Gateway
from digipoort.config import Settings
from digipoort.httpguard import GuardedSite, HttpGuard, HttpGuardConfig
from digipoort.pki import CertificateVerifier, refresh_crl, server_ssl_context
from routing.deliverer import Deliverer, wus_sender
from routing.download import Download

log = structlog.get_logger(__name__)

#: How often CRLs are re-read and stale replay-cache entries purged (seconds).
MAINTENANCE_INTERVAL = 60.0
#: The deliverer also wakes on NOTIFY and at the next due time; this bounds the rest
#: (e.g. a circuit breaker turning half-open).
DELIVERER_POLL_SECONDS = 1.0


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
    """Verifies participants' certificates (chain, CRL, OIN) per ``settings.pki``."""
    pki = s.pki
    return CertificateVerifier.from_files(
        s.resolve(pki.ca_file),
        [s.resolve(p) for p in pki.crl_files],
        s.resolve(pki.intermediates_file) if pki.intermediates_file else None,
        require_crl=pki.require_crl,
    )


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool is not None and gateway.registry is not None
    pki = s.pki
    crl_files = [s.resolve(p) for p in pki.crl_files]
    verifier = participant_verifier(s)
    ssl_context = server_ssl_context(
        s.resolve(pki.cert_file),
        s.resolve(pki.key_file),
        s.resolve(pki.ca_file),
        crl_files[0] if crl_files else None,
        intermediates_file=s.resolve(pki.intermediates_file) if pki.intermediates_file else None,
    )
    for extra in crl_files[1:]:
        refresh_crl(ssl_context, extra)
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
        runner, s.wus.host, s.wus.port, guard=guard, ssl_context=ssl_context, reuse_port=True
    )
    await site.start()
    log.info("wus.listening", host=s.wus.host, port=s.wus.port, public_url=s.wus.public_url)

    async def maintenance() -> None:
        keep = timedelta(seconds=2 * s.wus.max_clock_skew_seconds)
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL)
            try:
                verifier.reload_crls()
                for crl in crl_files:
                    refresh_crl(ssl_context, crl)
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

    return stop


async def start_deliverer(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """The ``deliverer`` component: push delivery with durable retries, per channel:
    ``wus`` (AfleverService) and ``smtp`` (SMTP relay to the recipient's MTA)."""
    s = gateway.settings
    assert gateway.pool and gateway.registry and gateway.store
    client = AfleverClient(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        s.resolve(s.pki.ca_file),
        participant_verifier(s),
        timeout=s.aflever.timeout_seconds,
    )
    relay = SmtpRelay(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        s.resolve(s.pki.ca_file),
        sender=f"{s.gateway_oin}@{s.smtp.domain}",
        domain=s.smtp.domain,
        timeout=s.aflever.timeout_seconds,
    )
    deliverer = Deliverer(
        gateway.pool,
        gateway.store,
        gateway.registry,
        {"wus": wus_sender(client.push), "smtp": relay.send},
        s,
        poll_interval=DELIVERER_POLL_SECONDS,
    )
    await deliverer.start()

    async def stop() -> None:
        await deliverer.stop()
        await client.close()

    return stop
