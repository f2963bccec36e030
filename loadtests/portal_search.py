"""Benchmark: the operator's message-log search and envelope page at production size.

    .venv/bin/python -m loadtests.portal_search --envelopes 1000000 --statuses-per 8

Seeds a throw-away database (own PKI, database and vhost, dropped afterwards) with
``--envelopes`` envelopes, one delivery each and ``--statuses-per`` statuses per envelope
(``generate_series`` in SQL, a few statements, not row by row; triggers off while
seeding), analyses it, starts the ``portal`` component, and measures every search
scenario and the envelope page through the real portal over mutual TLS (aiohttp client,
operator certificate, one request at a time): p50/p95/p99 per scenario. Target: every
p99 < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
from hdrh.histogram import HdrHistogram

from digipoort import logging as dlogging
from digipoort.devenv import ALFA, BELASTINGDIENST, CBS, DNB, DOUANE, HBAG, RIJKSDIENST_INKOOP
from digipoort.pki import client_ssl_context
from digipoort.pki.devpki import OPERATOR_OIN
from tests.support import Env, free_port, throwaway_env

SOORTEN = [
    "Omzetbelasting",
    "CBS-Detailhandel",
    "DigiInkoop-Factuur",
    "Douane-Uitvoer",
    "DNB-DGS",
    "DigiInkoop-Order",
]
RECIPIENTS = [BELASTINGDIENST, CBS, RIJKSDIENST_INKOOP, DOUANE, DNB, HBAG]
KOPPELVLAKKEN = ["wus", "wus", "wus", "smtp", "ftp", "portal"]
SENDERS = 2000  # distinct sender OINs; sender 0 is Alfa
DAYS = 365

# statuses per envelope, in order; the 8th is 500 (99 %) or 510 (1 %)
CODES = ["105", "100", "110", "200", "301", "405", "400"]

SEED_ENVELOPES = """
INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
    berichtkenmerk, belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,
    tijdstempel_aangeleverd, stage, handed_off)
SELECT md5('env' || i)::uuid,
       ($3::text[])[1 + i % 6],
       ($4::text[])[1 + (i / 7) % 6],
       CASE WHEN i % $5 = 0 THEN $6 ELSE lpad((99100000000000000 + i % $5)::text, 20, '0') END,
       'ak-' || i,
       'bk-' || i,
       '000000991', 'OIN', 'Bedrijf',
       $7::timestamptz - (i * ($8::float8 / $2)) * interval '1 second',
       'afgeleverd', true
FROM generate_series($1::bigint, $2::bigint - 1) AS i
"""

SEED_DELIVERIES = """
INSERT INTO deliveries (kenmerk, recipient_oin, channel, state, attempts, created_at,
    updated_at, delivered_at)
SELECT md5('env' || i)::uuid, ($3::text[])[1 + i % 6], 'queue', 'delivered', 1, t, t, t
FROM generate_series($1::bigint, $2::bigint - 1) AS i,
     LATERAL (SELECT $4::timestamptz - (i * ($5::float8 / $6)) * interval '1 second'
                     + interval '1 second' AS t) AS x
"""

SEED_STATUSES = """
INSERT INTO statuses (kenmerk, recipient_oin, code, tijdstempel, omschrijving)
SELECT md5('env' || i)::uuid,
       CASE WHEN c.n >= 6 THEN ($3::text[])[1 + i % 6] END,
       CASE WHEN c.n = 8 THEN (CASE WHEN i % 100 = 0 THEN '510' ELSE '500' END)
            ELSE ($4::text[])[c.n] END,
       $5::timestamptz - (i * ($6::float8 / $2)) * interval '1 second'
           + c.n * interval '100 milliseconds',
       'status'
FROM generate_series($1::bigint, $2::bigint - 1) AS i
CROSS JOIN generate_series(1, $7::int) AS c(n)
"""


TABLES = ["envelopes", "statuses", "deliveries"]


async def seed(env: Env, count: int, per: int, chunk: int) -> float:
    """Seed in chunks of ``chunk`` envelopes; secondary indexes are dropped while
    seeding and built again afterwards (far faster than maintaining them row by row).
    The i-th envelope is at now - i * 365 days / count, whatever the chunking."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    span = float(DAYS * 86400)
    conn = await env.conn()
    await conn.execute(
        "SET session_replication_role = replica; SET synchronous_commit = off;"
        " SET maintenance_work_mem = '256MB'"
    )
    indexes = await conn.fetch(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i"
        " WHERE i.schemaname = 'public' AND i.tablename = ANY($1::text[])"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
        TABLES,
    )
    for ix in indexes:
        await conn.execute(f'DROP INDEX "{ix["indexname"]}"')
    for lo in range(0, count, chunk):
        hi = min(count, lo + chunk)
        await conn.execute(
            SEED_ENVELOPES.replace("$2::bigint - 1", "$9::bigint - 1"),
            lo,
            count,
            SOORTEN,
            KOPPELVLAKKEN,
            SENDERS,
            ALFA,
            now,
            span,
            hi,
        )
        await conn.execute(SEED_DELIVERIES, lo, hi, RECIPIENTS, now, span, count)
        await conn.execute(
            SEED_STATUSES.replace("$2::bigint - 1", "$8::bigint - 1"),
            lo,
            count,
            RECIPIENTS,
            CODES,
            now,
            span,
            per,
            hi,
        )
        print(f"  seeded {hi:,} envelopes ({time.perf_counter() - started:.0f} s)", flush=True)
    for ix in indexes:
        await conn.execute(ix["indexdef"])
    print(f"  {len(indexes)} indexes built ({time.perf_counter() - started:.0f} s)", flush=True)
    await conn.execute("SET session_replication_role = DEFAULT")
    for table in TABLES:  # as autovacuum would: statistics and the visibility map
        await conn.execute(f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - started


def pct(h: HdrHistogram, p: float) -> float:
    return float(h.get_value_at_percentile(p)) / 1000.0


def scenarios(count: int, rng: random.Random) -> dict[str, Callable[[], str]]:
    now = datetime.now(UTC)

    def kenmerk() -> str:
        return str(
            uuid.UUID(
                bytes=__import__("hashlib").md5(f"env{rng.randrange(count)}".encode()).digest()
            )
        )

    def day() -> str:
        start = (now - timedelta(days=rng.randrange(DAYS))).date()
        return f"since={start.isoformat()}&until={(start + timedelta(days=1)).isoformat()}"

    def sender() -> str:
        return f"{99100000000000000 + rng.randrange(1, SENDERS):020d}"

    return {
        "kenmerk": lambda: f"/api/v1/search?kenmerk={kenmerk()}",
        "sender": lambda: f"/api/v1/search?sender={sender()}",
        "recipient": lambda: f"/api/v1/search?recipient={rng.choice(RECIPIENTS)}",
        "berichtsoort": lambda: f"/api/v1/search?berichtsoort={rng.choice(SOORTEN)}",
        "koppelvlak portal (1 in 6)": lambda: "/api/v1/search?koppelvlak=portal",
        "status 400 (every envelope)": lambda: "/api/v1/search?status=400",
        "status 510 (1 %)": lambda: "/api/v1/search?status=510",
        "period: one day": lambda: f"/api/v1/search?{day()}",
        "berichtsoort + status 510 + month": lambda: (
            f"/api/v1/search?berichtsoort={rng.choice(SOORTEN)}&status=510"
            f"&since={(now - timedelta(days=rng.randrange(30, DAYS))).date().isoformat()}"
        ),
        "recipient + koppelvlak + day": lambda: (
            f"/api/v1/search?recipient={rng.choice(RECIPIENTS)}&koppelvlak=smtp&{day()}"
        ),
        "sender + status 500": lambda: f"/api/v1/search?sender={sender()}&status=500",
        "envelope page (API)": lambda: f"/api/v1/envelopes/{kenmerk()}",
        "envelope page (HTML)": lambda: f"/envelopes/{kenmerk()}",
        "console search page (HTML)": lambda: f"/console?berichtsoort={rng.choice(SOORTEN)}",
    }


async def measure(url: str, env: Env, count: int, requests: int) -> dict[str, HdrHistogram]:
    pki = env.dir / "pki"
    ssl = client_ssl_context(pki / "operator.crt", pki / "operator.key", pki / "ca.crt")
    rng = random.Random(14)
    results: dict[str, HdrHistogram] = {}
    async with aiohttp.ClientSession(
        base_url=url, connector=aiohttp.TCPConnector(ssl=ssl, limit=1)
    ) as s:
        for name, make in scenarios(count, rng).items():
            h = HdrHistogram(1, 60_000_000, 3)
            for _ in range(5):  # warm-up: connection, templates, plans
                async with s.get(make()) as r:
                    await r.read()
            nxt = None
            for i in range(requests):
                path = make()
                if nxt and i % 2:  # every other search fetches the next page
                    path = nxt
                t0 = time.perf_counter()
                async with s.get(path) as r:
                    body = await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{path}: {r.status} {body[:200]!r}")
                h.record_value(max(1, int((time.perf_counter() - t0) * 1_000_000)))
                nxt = None
                if path.startswith("/api/v1/search"):
                    import json

                    cursor = json.loads(body).get("next_cursor")
                    if cursor:
                        nxt = path.split("&cursor=")[0] + "&cursor=" + cursor
            results[name] = h
            print(
                f"  {name:38s} p50 {pct(h, 50):7.1f}  p95 {pct(h, 95):7.1f}  "
                f"p99 {pct(h, 99):7.1f}  max {h.get_max_value() / 1000:7.1f} ms",
                flush=True,
            )
    return results


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--envelopes", type=int, default=1_000_000)
    p.add_argument("--statuses-per", type=int, default=8, choices=range(1, 9))
    p.add_argument("--requests", type=int, default=200, help="per scenario")
    p.add_argument("--chunk", type=int, default=250_000)
    args = p.parse_args()
    dlogging.configure("warning", json=True)
    async with throwaway_env("dpportal") as (env, _pki):
        print(
            f"seeding {args.envelopes:,} envelopes, {args.envelopes * args.statuses_per:,}"
            " statuses …",
            flush=True,
        )
        took = await seed(env, args.envelopes, args.statuses_per, args.chunk)
        print(f"seeded in {took:.0f} s", flush=True)
        port = free_port()
        env.settings.portal.port = port
        env.settings.portal.operators = [OPERATOR_OIN]
        env.settings.portal.rate_limit_per_minute = 1_000_000
        await env.start_gateway(("portal",))
        results = await measure(f"https://localhost:{port}", env, args.envelopes, args.requests)
        worst = max(pct(h, 99) for h in results.values())
        print(f"worst p99: {worst:.1f} ms — target < 200 ms: {'met' if worst < 200 else 'MISSED'}")


if __name__ == "__main__":
    asyncio.run(main())
