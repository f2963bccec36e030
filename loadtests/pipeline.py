"""Benchmark: N envelopes through intake to every recipient queue.

    .venv/bin/python -m loadtests.pipeline --count 5000 --concurrency 64

Runs in its own database and vhost (dropped afterwards). Intake and the load generator
run in this process; the validation and routing stages run in a separate
``digipoort serve --components stages`` process, as in production. Prints
envelopes/s, p50/p99 accept latency and end-to-end latency (tijdstempelAangeleverd →
status 400, from the status history), and the bare aio-pika baseline measured in the
same run: persistent messages published with confirms to a quorum queue and consumed
with acks — the least any broker-backed pipeline must do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

import aio_pika
from hdrh.histogram import HdrHistogram

from digipoort import logging as dlogging
from digipoort.devenv import BELASTINGDIENST
from tests.support import (
    Env,
    aanlevering,
    throwaway_env,
    wait_for,
)


def pct(h: HdrHistogram, p: float) -> float:
    return float(h.get_value_at_percentile(p)) / 1000.0  # µs → ms


async def baseline(amqp_url: str, count: int, concurrency: int) -> float:
    """Bare aio-pika: publish with confirms + consume with acks; messages/s."""
    conn = await aio_pika.connect(amqp_url)
    ch = await conn.channel(publisher_confirms=True)
    q = await ch.declare_queue("bench.baseline", durable=True, arguments={"x-queue-type": "quorum"})
    await q.purge()
    cch = await conn.channel()
    await cch.set_qos(prefetch_count=256)
    cq = await cch.get_queue("bench.baseline")
    received = 0
    done = asyncio.Event()

    async def on_message(msg: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal received
        await msg.ack()
        received += 1
        if received >= count:
            done.set()

    await cq.consume(on_message)
    body = b"x" * 2048
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await ch.default_exchange.publish(
                aio_pika.Message(
                    body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=str(i)
                ),
                routing_key="bench.baseline",
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    await asyncio.wait_for(done.wait(), timeout=600)
    elapsed = time.perf_counter() - start
    await q.delete(if_unused=False, if_empty=False)
    await conn.close()
    return count / elapsed


async def pipeline(
    env: Env, count: int, concurrency: int, split_stages: bool = False
) -> dict[str, float]:
    # validation and routing are one stage (issue 15): --split-stages runs two processes
    # of it (competing consumers), the way the stage scales
    groups = ["stages", "stages"] if split_stages else ["stages"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "digipoort.cli",
            "serve",
            "--config",
            str(env.config_path),
            "--components",
            group,
            env={**os.environ, "DIGIPOORT_HTTP__PORT": "0", "DIGIPOORT_LOG_LEVEL": "warning"},
        )
        for group in groups
    ]
    try:
        gw = await env.start_gateway(components=("intake",), serve_http=False)
        assert gw.intake is not None
        accept = HdrHistogram(1, 60_000_000, 3)
        sem = asyncio.Semaphore(concurrency)
        item = aanlevering("Omzetbelasting")

        async def one() -> None:
            async with sem:
                t0 = time.perf_counter()
                await gw.intake.aanleveren(item)  # type: ignore[union-attr]
                accept.record_value(max(1, int((time.perf_counter() - t0) * 1e6)))

        # warm-up
        await asyncio.gather(*(one() for _ in range(min(200, count))))
        conn = await env.conn()

        async def delivered(n: int) -> bool:
            return bool(
                await conn.fetchval("SELECT count(*) >= $1 FROM statuses WHERE code = '400'", n)
            )

        warm = min(200, count)
        await wait_for(lambda: delivered(warm), timeout=120, what="warm-up")
        accept.reset()
        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(count)))
        accept_elapsed = time.perf_counter() - start
        await wait_for(lambda: delivered(warm + count), timeout=600, what="all delivered")
        elapsed = time.perf_counter() - start
        e2e = HdrHistogram(1, 600_000_000, 3)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM s.tijdstempel - e.tijdstempel_aangeleverd) AS d"
            " FROM statuses s JOIN envelopes e USING (kenmerk) WHERE s.code = '400'"
            " ORDER BY s.id OFFSET $1",
            warm,
        )
        for r in rows:
            e2e.record_value(max(1, int(float(r["d"]) * 1e6)))
        dupes = await conn.fetchval(
            "SELECT count(*) - count(DISTINCT (kenmerk, recipient_oin)) FROM deliveries"
        )
        depth = await env.queue_depth(f"digipoort.aflever.{BELASTINGDIENST}")
        return {
            "rate": count / elapsed,
            "accept_rate": count / accept_elapsed,
            "accept_p50": pct(accept, 50),
            "accept_p99": pct(accept, 99),
            "e2e_p50": pct(e2e, 50),
            "e2e_p99": pct(e2e, 99),
            "duplicates": float(dupes),
            "queued": float(depth),
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            await proc.wait()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--split-stages", action="store_true", help="two stage processes (competing consumers)"
    )
    args = ap.parse_args()
    dlogging.configure("warning", json=True)
    async with throwaway_env() as (env, _pki):
        base = await baseline(env.amqp_url, args.count, args.concurrency)
        res = await pipeline(env, args.count, args.concurrency, args.split_stages)
    print(
        f"envelopes: {args.count}  concurrency: {args.concurrency}  cores: {os.cpu_count()}"
        f"  stages: {'stages | stages' if args.split_stages else 'stages'}"
    )
    print(f"bare aio-pika publish+consume:  {base:8.0f} msg/s")
    print(
        f"pipeline intake→recipient queue: {res['rate']:8.0f} env/s "
        f"(ratio {res['rate'] / base:.2f} of bare)"
    )
    print(f"intake accept rate:             {res['accept_rate']:8.0f} env/s")
    print(f"accept latency  p50 {res['accept_p50']:7.1f} ms  p99 {res['accept_p99']:7.1f} ms")
    print(f"end-to-end      p50 {res['e2e_p50']:7.1f} ms  p99 {res['e2e_p99']:7.1f} ms")
    print(f"duplicate deliveries: {res['duplicates']:.0f}  in recipient queue: {res['queued']:.0f}")


if __name__ == "__main__":
    asyncio.run(main())
