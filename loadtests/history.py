"""Benchmark: years of history (issue 16 part 3) on a PostgreSQL cluster of its own.

    .venv/bin/python -m loadtests.history --envelopes 10000000 --months 13

Starts its own cluster (tests/servers.py PgCluster: own port and data directory, never
the machine's server), applies the migrations with partitions from ``--months`` months
back, and seeds ``--envelopes`` envelopes spread evenly over those months with
``--statuses-per`` statuses, one document and one delivery each (set-based SQL per month:
``generate_series`` into a plain table, indexes built by ATTACH PARTITION; never row by
row). Then measures, one call at a time, through the real gateway functions
(adapters.wus.store, digipoort.statusstore):

* the status query per kenmerk (WUS getStatussenProces, statusstore.history),
* the getNieuweStatussen bookkeeping (getNieuweStatussenProces per kenmerk and
  getNieuweStatussen per berichtsoort + belanghebbende, with their INSERT into
  wus_statuses_returned),
* purging the oldest month (digipoort.partitions.purge_month) while intake-shaped
  transactions (envelope + document + 2 statuses + delivery, ``--writers`` at once) run:
  their latency before and during the purge.

Targets: status queries and bookkeeping p99 <= 5 ms; a month purges in seconds; intake
latency during the purge stays in the same order as before it. Check disk space first
(``df -h``): about 2.5 kB per envelope with 8 statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from hdrh.histogram import HdrHistogram

from adapters.wus import store as wus_store
from digipoort import db, partitions
from digipoort import logging as dlogging
from digipoort.envelope import Identiteit, new_kenmerk
from digipoort.partitions import Month
from digipoort.payloads import FilePayloadStore
from digipoort.statusstore import history
from tests.servers import PgCluster

SOORTEN = ["Omzetbelasting", "CBS-Detailhandel", "DigiInkoop-Factuur", "Douane-Uitvoer"]
CODES = ["105", "100", "110", "200", "301", "405", "400", "500", "510", "520"]
SENDERS = 1000
BELANGHEBBENDEN = 20000
BYTES_PER_ENVELOPE = 2500

KENMERK_FN = """
CREATE OR REPLACE FUNCTION bench_kenmerk(ms bigint, i bigint) RETURNS uuid
LANGUAGE sql IMMUTABLE AS $$
    SELECT (lpad(to_hex(ms), 12, '0') || '7' || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid
    FROM (SELECT md5(i::text) AS h) x
$$
"""

SEED_ENVELOPES = """
INSERT INTO "{t}" (kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
    berichtkenmerk, belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,
    tijdstempel_aangeleverd, stage, handed_off, updated_at)
SELECT bench_kenmerk(($1::bigint + (g * $3::bigint) / $2)::bigint, $4::bigint + g),
       ($5::text[])[1 + g % 4], 'wus',
       lpad((99100000000000000 + (g * 7919) % {senders})::text, 20, '0'),
       'ak-' || ($4::bigint + g), 'bk-' || ($4::bigint + g),
       lpad(((g * 104729) % {belanghebbenden})::text, 9, '0'), 'BSN', 'Bedrijf',
       to_timestamp(($1::bigint + (g * $3::bigint) / $2) / 1000.0), 'gerouteerd', true,
       to_timestamp(($1::bigint + (g * $3::bigint) / $2) / 1000.0)
FROM generate_series(0::bigint, $2::bigint - 1) g
"""

SEED_STATUSES = """
INSERT INTO "{t}" (id, kenmerk, recipient_oin, code, tijdstempel, omschrijving)
SELECT nextval('statuses_id_seq'), e.kenmerk, NULL, ($1::text[])[s],
       e.tijdstempel_aangeleverd + s * interval '20 seconds', 'status ' || s
FROM "{e}" e CROSS JOIN generate_series(1, $2) s
"""

SEED_DOCUMENTS = """
INSERT INTO "{t}" (kenmerk, seq, mime_type, bestandsnaam, size, sha256, data)
SELECT e.kenmerk, 0, 'text/xml', 'bericht.xml', 40, md5(e.kenmerk::text) || md5(e.berichtkenmerk),
       CASE WHEN hashtext(e.kenmerk::text) % 100 = 0 THEN NULL
            ELSE convert_to('<bericht>' || e.berichtkenmerk || '</bericht>', 'UTF8') END
FROM "{e}" e
"""

SEED_DELIVERIES = """
INSERT INTO "{t}" (kenmerk, recipient_oin, channel, state, created_at, updated_at, delivered_at)
SELECT e.kenmerk, '00000001003214345000', 'queue', 'delivered', e.tijdstempel_aangeleverd,
       e.tijdstempel_aangeleverd, e.tijdstempel_aangeleverd
FROM "{e}" e
"""

INTAKE_TX = [
    (
        "INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin, berichtkenmerk,"
        " belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,"
        " tijdstempel_aangeleverd) VALUES ($1, 'Omzetbelasting', 'wus',"
        " '00000099100000000001', 'bk', '000000001', 'BSN', 'Bedrijf', now())"
    ),
    "INSERT INTO documents VALUES ($1, 0, 'text/xml', 'b.xml', 4, 'x', '<a/>')",
    (
        "INSERT INTO statuses (kenmerk, code, tijdstempel, omschrijving)"
        " VALUES ($1, '105', now(), 'ontvangen'), ($1, '100', now(), 'aangeleverd')"
    ),
    "INSERT INTO deliveries (kenmerk, recipient_oin) VALUES ($1, '00000001003214345000')",
]


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _fmt(h: HdrHistogram) -> str:
    return (
        f"p50 {h.get_value_at_percentile(50) / 1000:.2f} ms, "
        f"p99 {h.get_value_at_percentile(99) / 1000:.2f} ms, "
        f"max {h.get_max_value() / 1000:.2f} ms (n={h.get_total_count()})"
    )


async def seed(conn: asyncpg.Connection, months: list[Month], total: int, per: int) -> None:
    await conn.execute(KENMERK_FN)
    now = datetime.now(UTC)
    n = total // len(months)
    for idx, m in enumerate(months):
        started = time.perf_counter()
        end = min(m.end, now - timedelta(minutes=5))
        span = _ms(end) - _ms(m.start)
        names = {t: f"{t}_{m.suffix}" for t in ("envelopes", "statuses", "documents", "deliveries")}
        for t, name in names.items():
            await conn.execute(f'DROP TABLE IF EXISTS "{name}"')
            await conn.execute(f'CREATE TABLE "{name}" (LIKE "{t}" INCLUDING DEFAULTS)')
        e = names["envelopes"]
        await conn.execute(
            SEED_ENVELOPES.format(t=e, senders=SENDERS, belanghebbenden=BELANGHEBBENDEN),
            _ms(m.start),
            n,
            span,
            idx * n,
            SOORTEN,
        )
        await conn.execute(SEED_STATUSES.format(t=names["statuses"], e=e), CODES, per)
        await conn.execute(SEED_DOCUMENTS.format(t=names["documents"], e=e))
        await conn.execute(SEED_DELIVERIES.format(t=names["deliveries"], e=e))
        lo, hi = partitions.month_bounds(m)
        for t, name in names.items():
            await conn.execute(
                f'ALTER TABLE "{t}" ATTACH PARTITION "{name}"'
                f" FOR VALUES FROM ('{lo}') TO ('{hi}')"
            )
        if idx == len(months) - 1:  # the getNieuweStatussen bookkeeping of the last month
            await conn.execute(
                f"INSERT INTO wus_statuses_returned (caller_oin, status_id, kenmerk)"
                f' SELECT e.sender_oin, s.id, s.kenmerk FROM "{names["statuses"]}" s'
                f' JOIN "{e}" e USING (kenmerk) WHERE s.id % 2 = 0'
            )
        print(
            f"  seeded {m}: {n} envelopes, {n * per} statuses"
            f" in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
    await conn.execute("ANALYZE")


async def measure(
    name: str, calls: list[Callable[[], Awaitable[Any]]], results: dict[str, str]
) -> None:
    h = HdrHistogram(1, 60_000_000, 3)
    cpu0 = time.process_time()
    for call in calls:
        t0 = time.perf_counter()
        await call()
        h.record_value(max(1, int((time.perf_counter() - t0) * 1_000_000)))
    cpu = (time.process_time() - cpu0) * 1000 / max(1, len(calls))
    results[name] = f"{_fmt(h)}, client CPU {cpu:.2f} ms/call"
    print(f"  {name}: {results[name]}", flush=True)


async def queries(pool: asyncpg.Pool, n: int, results: dict[str, str]) -> None:
    sample = [
        r["kenmerk"]
        for r in await pool.fetch(
            "SELECT kenmerk FROM envelopes TABLESAMPLE SYSTEM (1) WHERE kenmerk > $1 LIMIT $2",
            partitions.kenmerk_bound(datetime(2020, 1, 1, tzinfo=UTC)),
            n * 20,
        )
    ]
    random.shuffle(sample)
    sample = sample[:n]
    recent = [
        (r["kenmerk"], r["sender_oin"], r["berichtsoort"], r["belanghebbende_nummer"])
        for r in await pool.fetch(
            "SELECT kenmerk, sender_oin, berichtsoort, belanghebbende_nummer FROM envelopes"
            " WHERE tijdstempel_aangeleverd > now() - interval '20 days'"
            " ORDER BY random() LIMIT $1",
            n * 2,
        )
    ]
    # warm up (plans, caches)
    for k in sample[:50]:
        await wus_store.statussen(pool, k, None, None)
    await measure(
        "getStatussenProces (status query per kenmerk)",
        [lambda k=k: wus_store.statussen(pool, k, None, None) for k in sample],  # type: ignore[misc]
        results,
    )
    await measure(
        "statusstore.history per kenmerk",
        [lambda k=k: history(pool, k) for k in sample],  # type: ignore[misc]
        results,
    )
    first, second = recent[:n], recent[n:]
    await measure(
        "getNieuweStatussenProces (bookkeeping per kenmerk)",
        [
            lambda r=r: wus_store.nieuwe_statussen_proces(pool, r[1], r[0], None, None)  # type: ignore[misc]
            for r in first
        ],
        results,
    )
    await measure(
        "getNieuweStatussen (berichtsoort + belanghebbende)",
        [
            lambda r=r: wus_store.nieuwe_statussen(  # type: ignore[misc]
                pool, r[1], None, r[2], Identiteit(r[3], "BSN"), None, None
            )
            for r in second
        ],
        results,
    )


async def intake_writer(
    pool: asyncpg.Pool, stop: asyncio.Event, phase: list[str], hists: dict[str, HdrHistogram]
) -> None:
    while not stop.is_set():
        k = new_kenmerk()
        t0 = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            for sql in INTAKE_TX:
                await conn.execute(sql, k)
        hists[phase[0]].record_value(max(1, int((time.perf_counter() - t0) * 1_000_000)))


async def purge_under_intake(
    url: str,
    pool: asyncpg.Pool,
    month: Month,
    store_dir: Path,
    writers: int,
    results: dict[str, str],
) -> None:
    store = FilePayloadStore(store_dir)
    conn = await db.connect(url)
    try:
        # the month's payload files (1 % of its documents are in the store)
        shas = [
            r["sha256"]
            for r in await conn.fetch(
                f'SELECT sha256 FROM "documents_{month.suffix}" WHERE data IS NULL'
            )
        ]
        for sha in shas:
            path = store.path_for(sha)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
            os.utime(path, (time.time() - 7200, time.time() - 7200))
        hists = {p: HdrHistogram(1, 60_000_000, 3) for p in ("before", "during", "after")}
        phase = ["before"]
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(intake_writer(pool, stop, phase, hists)) for _ in range(writers)
        ]
        await asyncio.sleep(5)
        phase[0] = "during"
        later = month.end + timedelta(days=500)
        result = await partitions.purge_month(conn, str(month), store, now=later)
        phase[0] = "after"
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*tasks)
        left = sum(1 for sha in shas if store.path_for(sha).exists())
        results["purge"] = (
            f"{month}: {result.envelopes} envelopes, {result.statuses} statuses,"
            f" {result.payloads} payload files ({left} left) in {result.seconds:.2f} s"
        )
        for p, h in hists.items():
            results[f"intake {p} purge"] = _fmt(h)
        for k, v in results.items():
            if k.startswith("intake") or k == "purge":
                print(f"  {k}: {v}", flush=True)
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envelopes", type=int, default=1_000_000)
    ap.add_argument("--statuses-per", type=int, default=8)
    ap.add_argument("--months", type=int, default=13)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--dir", type=Path, default=None, help="Cluster directory (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="Keep the cluster directory.")
    args = ap.parse_args()
    dlogging.configure("warning", json=True)
    base = Path(tempfile.mkdtemp(prefix="histbench-", dir=args.dir))
    base.chmod(0o755)  # the server runs as postgres
    free = shutil.disk_usage(base).free
    need = args.envelopes * BYTES_PER_ENVELOPE * args.statuses_per // 8
    print(f"disk: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed", flush=True)
    if free < need * 1.5:
        raise SystemExit("not enough disk space")
    cluster = PgCluster(
        base / "pg",
        settings={
            "shared_buffers": "1GB",
            "maintenance_work_mem": "1GB",
            "work_mem": "64MB",
            "max_wal_size": "20GB",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "synchronous_commit": "off",
            "checkpoint_timeout": "30min",
            "max_parallel_maintenance_workers": "2",
        },
    )
    (base / "pg").mkdir()
    await cluster.start()
    results: dict[str, str] = {}
    try:
        admin = await asyncpg.connect(cluster.url())
        await admin.execute("CREATE DATABASE history")
        await admin.close()
        url = cluster.url("history")
        current = Month.of(datetime.now(UTC))
        months = [current.plus(-i) for i in range(args.months - 1, -1, -1)]
        conn = await db.connect(url)
        try:
            await conn.execute(f"SET digipoort.partitions_from = '{months[0]}-01'")
            await db.migrate(conn)
            print(f"seeding {args.envelopes} envelopes over {args.months} months", flush=True)
            t0 = time.perf_counter()
            await seed(conn, months, args.envelopes, args.statuses_per)
            seed_s = time.perf_counter() - t0
            size = await conn.fetchval("SELECT pg_size_pretty(pg_database_size('history'))")
            counts = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM envelopes) AS e, (SELECT count(*) FROM statuses) AS s"
            )
            results["seeded"] = (
                f"{counts['e']} envelopes, {counts['s']} statuses, {size}, in {seed_s:.0f} s"
            )
            print(f"  {results['seeded']}", flush=True)
        finally:
            await conn.close()
        pool = await db.create_pool(url, min_size=2, max_size=args.writers + 2)
        try:
            await queries(pool, args.queries, results)
            await purge_under_intake(url, pool, months[0], base / "payloads", args.writers, results)
        finally:
            await pool.close()
    finally:
        await cluster.remove() if not args.keep else await cluster.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    print("\nresults:")
    for k, v in results.items():
        print(f"  {k}: {v}")


if __name__ == "__main__":
    asyncio.run(main())
