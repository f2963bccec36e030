"""Operational gauges: queue depths, database pool use, certificate and CRL expiry.

* :func:`sample_pool` — every gateway process samples its own PostgreSQL pool into
  ``digipoort_db_pool_connections{state="in_use|idle|max"}`` (started by the Gateway,
  summed over live processes under ``serve --processes N``).
* the ``opsmetrics`` component (entry point ``digipoort.components``) — one collector that
  every ``interval`` seconds (15 by default) reads RabbitMQ's management API for the
  queues of the gateway's vhost into ``digipoort_queue_messages{queue}`` /
  ``digipoort_queue_consumers{queue}``, and the gateway certificate, trust anchors,
  intermediates and CRLs into ``digipoort_certificate_expiry_seconds{subject,kind}``.

Run the component in one process per deployment (more is harmless: the gauges are
``livemax``/``livemin``, a scrape of any process shows the same figures). Labels are
bounded: queue names are the gateway's topology plus one per recipient OIN, subjects come
from the configured PKI files.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote

import asyncpg
import structlog
from cryptography import x509

from digipoort import metrics
from digipoort.config import Settings
from digipoort.pki import CertificateVerifier
from digipoort.pki.wiring import revocation_service
from digipoort.provision import Management, vhost_of

if TYPE_CHECKING:
    from digipoort.app import Gateway

log = structlog.get_logger(__name__)

INTERVAL = 15.0
POOL_INTERVAL = 5.0
QUEUE_PREFIX = "digipoort."


# ----------------------------------------------------------------------- database pool


def sample_pool(pool: asyncpg.Pool) -> None:
    size = pool.get_size()
    idle = pool.get_idle_size()
    metrics.DB_POOL.labels("in_use").set(max(0, size - idle))
    metrics.DB_POOL.labels("idle").set(idle)
    metrics.DB_POOL.labels("max").set(pool.get_max_size())


async def run_pool_sampler(
    pool: asyncpg.Pool, stopping: asyncio.Event, interval: float = POOL_INTERVAL
) -> None:
    """Sample ``pool`` every ``interval`` seconds until ``stopping`` is set."""
    while not stopping.is_set():
        sample_pool(pool)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)


# ----------------------------------------------------------------------- queue depths


async def collect_queues(management: Management, vhost: str) -> dict[str, tuple[int, int]]:
    """``{queue: (messages, consumers)}`` for the gateway's queues in ``vhost``."""
    result = await management.request(
        "GET", f"/queues/{quote(vhost, safe='')}?columns=name,messages,consumers"
    )
    queues: dict[str, tuple[int, int]] = {}
    if isinstance(result, list):
        for q in result:
            if not isinstance(q, dict):
                continue
            name = str(q.get("name", ""))
            if not name.startswith(QUEUE_PREFIX):
                continue
            queues[name] = (int(q.get("messages") or 0), int(q.get("consumers") or 0))
    return queues


class QueueGauges:
    """Keeps the queue gauges equal to the last reading (queues gone are removed)."""

    def __init__(self) -> None:
        self._known: set[str] = set()

    def update(self, queues: dict[str, tuple[int, int]]) -> None:
        for name, (messages, consumers) in queues.items():
            metrics.QUEUE_MESSAGES.labels(name).set(messages)
            metrics.QUEUE_CONSUMERS.labels(name).set(consumers)
        for gone in self._known - queues.keys():
            with contextlib.suppress(KeyError):
                metrics.QUEUE_MESSAGES.remove(gone)
                metrics.QUEUE_CONSUMERS.remove(gone)
        self._known = set(queues)


# ----------------------------------------------------------------------- certificates


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def expiry_dates(settings: Settings) -> dict[tuple[str, str], datetime]:
    """``{(subject, kind): date}`` of the gateway certificate, the trust anchors and
    intermediates (notAfter) and each issuer's newest CRL (nextUpdate) — from the local
    CRL files and the CRLs the process's revocation service fetched."""
    pki = settings.pki
    dates: dict[tuple[str, str], datetime] = {}
    cert_file = settings.resolve(pki.cert_file)
    if cert_file.exists():
        gateway_cert = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        dates[(_subject(gateway_cert), "gateway")] = gateway_cert.not_valid_after_utc
    ca_file = settings.resolve(pki.ca_file)
    if ca_file.exists():
        inter = settings.resolve(pki.intermediates_file) if pki.intermediates_file else None
        verifier = CertificateVerifier.from_files(
            ca_file, (), inter if inter is not None and inter.exists() else None
        )
        report = verifier.expiry_report() | revocation_service(settings).expiry_report()
        for key, when in report.items():
            kind, _, subject = key.partition(":")
            dates[(subject, kind)] = when
    return dates


class ExpiryGauges:
    def __init__(self) -> None:
        self._known: set[tuple[str, str]] = set()

    def update(self, dates: dict[tuple[str, str], datetime], now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        for (subject, kind), when in dates.items():
            metrics.CERTIFICATE_EXPIRY.labels(subject, kind).set((when - now).total_seconds())
        for gone in self._known - dates.keys():
            with contextlib.suppress(KeyError):
                metrics.CERTIFICATE_EXPIRY.remove(*gone)
        self._known = set(dates)


# ----------------------------------------------------------------------- the component


class OpsCollector:
    """Samples queue depths and certificate expiry every ``interval`` seconds."""

    def __init__(self, settings: Settings, *, interval: float = INTERVAL) -> None:
        self.settings = settings
        self.interval = interval
        self.management = Management(settings.broker.management_nodes)
        self.vhost = vhost_of(settings.broker.url)
        self.queues = QueueGauges()
        self.expiry = ExpiryGauges()

    async def collect_once(self) -> None:
        try:
            self.queues.update(await collect_queues(self.management, self.vhost))
        except Exception as exc:  # the broker is down or the API refuses: keep going
            metrics.QUEUE_SCRAPE_ERRORS.inc()
            log.warning("opsmetrics.queues_failed", error=repr(exc))
        try:
            dates = await asyncio.to_thread(expiry_dates, self.settings)
            self.expiry.update(dates)
        except Exception as exc:
            log.warning("opsmetrics.expiry_failed", error=repr(exc))

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.collect_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """The ``opsmetrics`` component."""
    collector = OpsCollector(gateway.settings)
    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(collector.run(stopping))

    async def stop() -> None:
        stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return stop
