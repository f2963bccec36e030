"""Operational gauges: queue depths, database pool use, certificate and CRL expiry.

* :func:`sample_pool` — every gateway process samples its own PostgreSQL pool into
  ``digipoort_db_pool_connections{state="in_use|idle|max"}`` (started by the Gateway,
  summed over live processes under ``serve --processes N``).
* the ``opsmetrics`` component (entry point ``digipoort.components``) — one collector that
  every ``interval`` seconds (15 by default) reads RabbitMQ's management API for the
  queues of the gateway's vhost into ``digipoort_queue_messages{queue}`` /
  ``digipoort_queue_consumers{queue}``, and the gateway certificate, trust anchors,
  intermediates and CRLs into ``digipoort_certificate_expiry_seconds{subject,kind}``, and
  the planner statistics of the hot tables (issue 15 item 7) from ``pg_stat_user_tables``
  into ``digipoort_db_stats_age_seconds{table}`` (since the last ANALYZE or autoanalyze;
  +Inf: never), ``digipoort_db_modified_since_analyze_ratio{table}`` (rows changed since
  then / live rows) and ``digipoort_db_dead_tuple_ratio{table}`` (dead / (live + dead)).
  Stale statistics make the planner scan whole tables (alert ``DigipoortStaleStatistics``).

The component needs only the process's settings and database pool (:class:`Host`); it
does not import :mod:`digipoort.app` (which imports this module for the pool sampler).

Run the component in one process per deployment (more is harmless: the gauges are
``livemax``/``livemin``, a scrape of any process shows the same figures). Labels are
bounded: queue names are the gateway's topology plus one per recipient OIN, subjects come
from the configured PKI files.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import quote

import asyncpg
import structlog
from cryptography import x509

from digipoort import db, metrics
from digipoort.config import Settings
from digipoort.pki import CertificateVerifier
from digipoort.pki.wiring import revocation_service
from digipoort.provision import Management, vhost_of

log = structlog.get_logger(__name__)

INTERVAL = 15.0
POOL_INTERVAL = 15.0
QUEUE_PREFIX = "digipoort."
HOT_TABLES = db.HOT_TABLES


class Host(Protocol):
    """What the component uses of the process (the Gateway provides it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def pool(self) -> asyncpg.Pool | None: ...


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


# ----------------------------------------------------------------------- table statistics


@dataclass(frozen=True)
class TableStats:
    age: float  # seconds since the last ANALYZE / autoanalyze; +Inf: never
    modified_ratio: float  # rows inserted/updated/deleted since then / live rows
    dead_ratio: float  # dead / (live + dead) rows


#: the leaf tables of each named table: itself, or its partitions (migration 012) — the
#: planner reads the leaves' statistics, and a partitioned parent has no rows of its own
_LEAF_STATS = """
WITH RECURSIVE tree AS (
    SELECT c.oid AS relid, c.relname AS root FROM pg_class c
     WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::regnamespace
    UNION ALL
    SELECT i.inhrelid, t.root FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT t.root AS relname, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,
       extract(epoch FROM now() - greatest(s.last_analyze, s.last_autoanalyze)) AS age
  FROM tree t JOIN pg_class c ON c.oid = t.relid AND c.relkind = 'r'
  JOIN pg_stat_user_tables s ON s.relid = t.relid
"""


async def collect_table_stats(
    conn: asyncpg.Pool | asyncpg.Connection, tables: tuple[str, ...] = HOT_TABLES
) -> dict[str, TableStats]:
    """The statistics state of ``tables`` from ``pg_stat_user_tables``. A partitioned
    table sums its leaves' rows; its age is that of the stalest leaf holding at least 1 %
    of the table's rows (so an empty partition created ahead does not count)."""
    leaves: dict[str, list[tuple[int, int, int, float]]] = {}
    for r in await conn.fetch(_LEAF_STATS, list(tables)):
        age = math.inf if r["age"] is None else max(0.0, float(r["age"]))
        leaves.setdefault(str(r["relname"]), []).append(
            (
                int(r["n_live_tup"] or 0),
                int(r["n_dead_tup"] or 0),
                int(r["n_mod_since_analyze"] or 0),
                age,
            )
        )
    stats: dict[str, TableStats] = {}
    for table, rows in leaves.items():
        live = sum(row[0] for row in rows)
        dead = sum(row[1] for row in rows)
        modified = sum(row[2] for row in rows)
        total = live + modified
        weighty = [row[3] for row in rows if total and (row[0] + row[2]) * 100 >= total]
        stats[table] = TableStats(
            age=max(weighty) if weighty else max(row[3] for row in rows),
            modified_ratio=modified / max(live, 1),
            dead_ratio=dead / (live + dead) if live + dead else 0.0,
        )
    return stats


def update_table_gauges(stats: dict[str, TableStats]) -> None:
    for table, st in stats.items():
        metrics.DB_STATS_AGE.labels(table).set(st.age)
        metrics.DB_MODIFIED_SINCE_ANALYZE.labels(table).set(st.modified_ratio)
        metrics.DB_DEAD_TUPLES.labels(table).set(st.dead_ratio)


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
    """Samples queue depths, certificate expiry and (given a pool) the hot tables'
    statistics every ``interval`` seconds."""

    def __init__(
        self,
        settings: Settings,
        *,
        interval: float = INTERVAL,
        pool: asyncpg.Pool | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
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
        if self.pool is not None:
            try:
                update_table_gauges(await collect_table_stats(self.pool))
            except Exception as exc:  # the database is down: the next round tries again
                log.warning("opsmetrics.table_stats_failed", error=repr(exc))

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            await self.collect_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.interval)


async def start(host: Host) -> Callable[[], Awaitable[None]]:
    """The ``opsmetrics`` component."""
    collector = OpsCollector(host.settings, pool=host.pool)
    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(collector.run(stopping))

    async def stop() -> None:
        stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return stop
