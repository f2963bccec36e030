"""Benchmark: the archive's own cost per WUS envelope (CPU and latency), in-process.

    .venv/bin/python -m loadtests.archive --count 4000 --concurrency 64

Each "envelope" is what the WUS hooks archive for one aanleveren: the signed request
(``--request-bytes``, default 6 KiB) before intake and the signed response (3 KiB) before
it is sent, each awaited until fsync'ed, from ``--concurrency`` concurrent tasks (so
group commit works as under load). Prints CPU-ms per envelope of this process (the
event loop's side and the writer thread: process CPU from ``os.times``), records per
fsync, and p50/p99 of the two awaits. The end-to-end figure (archive on vs off with the
whole gateway) comes from ``python -m loadtests.run --koppelvlak wus`` with
``DIGIPOORT_ARCHIVE__ENABLED=false`` for the baseline (docs/archive.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

from hdrh.histogram import HdrHistogram
from prometheus_client import REGISTRY

from digipoort.archive import recorder
from digipoort.config import Settings


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(config_dir=Path(tmp))
        settings.archive.maintenance = False
        settings.archive.fsync = not args.no_fsync
        rec = recorder(settings)
        request = b"<s:Envelope>" + b"x" * args.request_bytes + b"</s:Envelope>"
        response = b"<s:Envelope>" + b"y" * 3072 + b"</s:Envelope>"
        latency = HdrHistogram(1, 60_000_000, 3)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.count):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                exchange = rec.exchange("wus", peer=("192.0.2.1", 1234))
                t0 = time.perf_counter()
                ok = await exchange.received(
                    "wus.request", request, oin="00000001", operation="aanleveren"
                )
                ok = ok and await exchange.answered(
                    "wus.response", response, kenmerk=str(uuid.uuid4())
                )
                assert ok
                latency.record_value(int((time.perf_counter() - t0) * 1e6))

        await asyncio.gather(*(worker() for _ in range(2)))  # warm up (thread, segment)
        for i in range(args.count):
            queue.put_nowait(i)
        latency.reset()
        batches0 = REGISTRY.get_sample_value("digipoort_archive_batch_records_count") or 0
        cpu0, wall0 = os.times(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        cpu1, wall1 = os.times(), time.perf_counter()
        batches = (REGISTRY.get_sample_value("digipoort_archive_batch_records_count") or 0) - (
            batches0
        )
        cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        n = args.count
        print(
            f"envelopes {n}, concurrency {args.concurrency}, fsync {settings.archive.fsync},"
            f" request {len(request)} B"
        )
        print(f"wall {wall1 - wall0:.2f} s, {n / (wall1 - wall0):.0f} envelopes/s")
        print(f"CPU {cpu * 1000 / n:.3f} ms per envelope (user+sys, both records)")
        print(f"records per fsync {2 * n / max(batches, 1):.1f}")
        print(
            "latency of both awaits: p50 "
            f"{latency.get_value_at_percentile(50) / 1000:.2f} ms, p99 "
            f"{latency.get_value_at_percentile(99) / 1000:.2f} ms"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--request-bytes", type=int, default=6 * 1024)
    ap.add_argument("--no-fsync", action="store_true")
    asyncio.run(main(ap.parse_args()))
