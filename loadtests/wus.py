"""Benchmark: signed WUS aanleveren requests at a fixed arrival rate.

    .venv/bin/python -m loadtests.wus --count 2000 --rate 200

Runs in its own database and vhost (dropped afterwards). The gateway runs as in
production in separate processes: ``serve --components intake,sweeper,wus`` and
``serve --components validator,router``. This process is only the load generator: every
request is signed *before* the run (so signing is not the bottleneck) and sent open-loop at
``--rate`` per second over mutual TLS (latency is measured from the scheduled send time,
so a stalled server cannot hide queueing: no coordinated omission). Prints accept latency
p50/p99 (request → signed aanleverResponse), end-to-end p50/p99 (tijdstempelAangeleverd →
status 400 = confirmed into the recipient's queue), and the same request stream against a
bare aiohttp mutual-TLS echo server (a separate process, same certificates, same bodies)
measured in the same run, reported as a ratio.

Requests are signed with a Timestamp valid for 10 minutes; keep count / rate well below
the clock skew (300 s).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web
from hdrh.histogram import HdrHistogram

from adapters.wus.client import Bijlage, WusClient, aanlever_request
from adapters.wus.wsdl import AANLEVER_PATH
from digipoort import logging as dlogging
from digipoort.devenv import ALFA
from digipoort.pki import server_ssl_context
from digipoort.wus.soap import AANLEVERSERVICE_NS
from tests.support import (
    SAMPLES,
    Env,
    free_port,
    throwaway_env,
    wait_for,
)

ACTION = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"


def cpu_ms(pid: int) -> float:
    """user+sys CPU of ``pid`` (its own threads; the gateway front forks no children), ms."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) * 1000.0 / os.sysconf("SC_CLK_TCK")


def pct(h: HdrHistogram, p: float) -> float:
    return float(h.get_value_at_percentile(p)) / 1000.0  # µs → ms


# --------------------------------------------------------------------------- echo server


def echo_server(port: int, pki: Path) -> None:
    """A bare aiohttp HTTPS server with the same mutual-TLS context: reads the body, answers
    with a small XML document (the least any WUS endpoint must do)."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=b"<ok>%d</ok>" % len(body), content_type="text/xml")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(AANLEVER_PATH, handle)
    context = server_ssl_context(
        pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "ca.crl"
    )
    web.run_app(app, host="127.0.0.1", port=port, ssl_context=context, print=None)


# --------------------------------------------------------------------------- load


async def wait_port(port: int, timeout: float = 60.0) -> None:
    async def up() -> bool:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        w.close()
        return True

    await wait_for(up, timeout=timeout, what=f"port {port}")


async def drive(
    client: WusClient, url: str, bodies: list[bytes], rate: float
) -> tuple[HdrHistogram, int, float]:
    """Send every body at its scheduled time; (latency histogram, errors, elapsed s)."""
    hist = HdrHistogram(1, 600_000_000, 3)
    errors = 0
    connector = aiohttp.TCPConnector(ssl=client.ssl, limit=512)
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ACTION}"'}
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(body: bytes, scheduled: float) -> None:
            nonlocal errors
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                async with http.post(url + AANLEVER_PATH, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
            except (aiohttp.ClientError, OSError):
                errors += 1
            hist.record_value(max(1, int((time.perf_counter() - scheduled) * 1e6)))

        start = time.perf_counter() + 0.2
        tasks = [asyncio.create_task(one(body, start + i / rate)) for i, body in enumerate(bodies)]
        await asyncio.gather(*tasks)
        return hist, errors, time.perf_counter() - start


def sign_all(client: WusClient, count: int, size: int) -> list[bytes]:
    content = (SAMPLES / "omzetbelasting.xml").read_bytes()
    if size > len(content):
        content = content.replace(b"</", b"<!--" + b"x" * (size - len(content)) + b"--></", 1)
    run = uuid.uuid4().hex[:12]
    # a distinct aanleverkenmerk per request: identical ones would be resubmissions
    return [
        client.sign(
            AANLEVER_PATH,
            ACTION,
            aanlever_request(
                berichtsoort="Omzetbelasting",
                belanghebbende=(ALFA, "OIN"),
                inhoud=Bijlage("text/xml", "omzetbelasting.xml", content),
                aanleverkenmerk=f"bench-{run}-{i}",
            ),
            ttl=timedelta(minutes=10),
        )[1]
        for i in range(count)
    ]


async def run(env: Env, pki: Path, count: int, rate: float, size: int) -> dict[str, float]:
    base_env = {
        **os.environ,
        "DIGIPOORT_HTTP__PORT": "0",
        "DIGIPOORT_LOG_LEVEL": "warning",
        # one load generator address drives up to 512 connections (the per-IP guard's default
        # is 100: a real deployment sees many client addresses)
        "DIGIPOORT_WUS__MAX_CONNECTIONS_PER_IP": "1024",
    }
    cli = [sys.executable, "-m", "digipoort.cli", "serve", "--config", str(env.config_path)]
    front = await asyncio.create_subprocess_exec(
        *cli, "--components", "intake,sweeper,wus", env=base_env
    )
    stages = await asyncio.create_subprocess_exec(
        *cli, "--components", "validator,router", env=base_env
    )
    echo_port = free_port()
    echo = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtests.wus", "--echo-server", str(echo_port), "--pki", str(pki)
    )
    try:
        await wait_port(env.settings.wus.port)
        await wait_port(echo_port)
        url = env.settings.wus.public_url
        client = WusClient(url, pki / f"{ALFA}.crt", pki / f"{ALFA}.key", pki / "ca.crt")
        # warm-up (connections, caches, JIT-less but still: first requests are slower)
        warm = sign_all(client, min(100, count), size)
        await drive(client, url, warm, rate)
        echo_url = f"https://localhost:{echo_port}"
        await drive(client, echo_url, warm, rate)

        bodies = sign_all(client, count, size)
        cpu0 = cpu_ms(front.pid), cpu_ms(stages.pid)
        accept, errors, elapsed = await drive(client, url, bodies, rate)
        cpu_accepted = cpu_ms(front.pid)
        conn = await env.conn()
        target = len(warm) + count - errors

        async def delivered() -> bool:
            return bool(
                await conn.fetchval(
                    "SELECT count(*) >= $1 FROM statuses WHERE code = '400'", target
                )
            )

        await wait_for(delivered, timeout=600, what="all delivered")
        cpu1 = cpu_ms(front.pid), cpu_ms(stages.pid)
        e2e = HdrHistogram(1, 600_000_000, 3)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM s.tijdstempel - e.tijdstempel_aangeleverd) AS d"
            " FROM statuses s JOIN envelopes e USING (kenmerk) WHERE s.code = '400'"
            " ORDER BY s.id OFFSET $1",
            len(warm),
        )
        for r in rows:
            e2e.record_value(max(1, int(float(r["d"]) * 1e6)))
        await conn.execute("SELECT pg_stat_force_next_flush()")
        tables = {
            r["relname"]: r
            for r in await conn.fetch(
                "SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE relname IN ('envelopes', 'deliveries')"
            )
        }
        commits = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        echo_hist, echo_errors, _ = await drive(client, echo_url, bodies, rate)
        await client.close()
        return {
            "achieved": count / elapsed,
            "errors": float(errors),
            "accept_p50": pct(accept, 50),
            "accept_p99": pct(accept, 99),
            "e2e_p50": pct(e2e, 50),
            "e2e_p99": pct(e2e, 99),
            "echo_p50": pct(echo_hist, 50),
            "echo_p99": pct(echo_hist, 99),
            "echo_errors": float(echo_errors),
            "body": float(len(bodies[0])),
            # CPU per envelope: the front (TLS, verify, intake, signing) while the requests
            # were answered, and front / stages until the last 400
            "front_cpu": (cpu_accepted - cpu0[0]) / count,
            "front_cpu_all": (cpu1[0] - cpu0[0]) / count,
            "stages_cpu": (cpu1[1] - cpu0[1]) / count,
            # over the whole run (warm-up included), every process of the database
            "commits": float(commits) / target,
            "env_updates": float(tables["envelopes"]["n_tup_upd"]) / target,
            "env_hot": float(tables["envelopes"]["n_tup_hot_upd"]) / target,
        }
    finally:
        for proc in (front, stages, echo):
            proc.send_signal(signal.SIGTERM)
        for proc in (front, stages, echo):
            await proc.wait()


async def main(args: argparse.Namespace) -> None:
    dlogging.configure("warning", json=True)
    async with throwaway_env() as (env, pki):
        res = await run(env, pki, args.count, args.rate, args.size)
    print(
        f"requests: {args.count}  rate: {args.rate:.0f}/s  body: {res['body']:.0f} B  "
        f"cores: {os.cpu_count()}"
    )
    print(f"achieved send rate:      {res['achieved']:8.0f} req/s   errors: {res['errors']:.0f}")
    print(f"WUS accept     p50 {res['accept_p50']:8.1f} ms  p99 {res['accept_p99']:8.1f} ms")
    print(f"end-to-end     p50 {res['e2e_p50']:8.1f} ms  p99 {res['e2e_p99']:8.1f} ms")
    print(
        f"bare mTLS echo p50 {res['echo_p50']:8.1f} ms  p99 {res['echo_p99']:8.1f} ms"
        f"   errors: {res['echo_errors']:.0f}"
    )
    print(
        f"CPU per envelope: front {res['front_cpu']:.2f} ms while accepting, "
        f"{res['front_cpu_all']:.2f} ms until the last 400; stages {res['stages_cpu']:.2f} ms"
    )
    print(
        f"PostgreSQL per envelope (whole run, all processes): {res['commits']:.2f} commits; "
        f"envelopes updates {res['env_updates']:.2f} of which HOT {res['env_hot']:.2f}"
    )
    print(
        f"ratio WUS/echo p50 {res['accept_p50'] / res['echo_p50']:.1f}x  "
        f"p99 {res['accept_p99'] / res['echo_p99']:.1f}x"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--size", type=int, default=0, help="inhoud size in bytes (0: sample)")
    ap.add_argument("--echo-server", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pki", type=Path, default=None, help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.echo_server is not None:
        echo_server(ns.echo_server, ns.pki)
    else:
        asyncio.run(main(ns))
