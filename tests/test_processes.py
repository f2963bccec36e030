"""``serve --processes 2``: both processes take work; SIGTERM drains both, nothing lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from urllib.parse import quote

import aiohttp

from digipoort.provision import Management
from tests.support import BELASTINGDIENST, MGMT, Env, aanlevering, free_port, wait_for


async def test_two_processes_share_work_and_drain_on_sigterm(env: Env) -> None:
    http_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digipoort.cli",
            "serve",
            "--config",
            str(env.config_path),
            "--components",
            "validator,router",
            "--processes",
            "2",
        ],
        env={
            **os.environ,
            "DIGIPOORT_HTTP__PORT": str(http_port),
            "DIGIPOORT_LOG_LEVEL": "warning",
        },
        stdout=subprocess.DEVNULL,
    )
    try:
        mgmt = Management(MGMT)

        async def two_consumers() -> bool:
            try:
                q = await mgmt.request(
                    "GET", f"/queues/{quote(env.name, safe='')}/digipoort.validate"
                )
            except RuntimeError:  # not declared yet
                return False
            return isinstance(q, dict) and q.get("consumers") == 2

        await wait_for(two_consumers, timeout=30, what="a validate consumer in each process")
        gw = await env.start_gateway(components=("intake",), serve_http=False)
        assert gw.intake is not None
        accepted = await asyncio.gather(
            *(gw.intake.aanleveren(aanlevering("Omzetbelasting")) for _ in range(300))
        )

        async def metrics_of_both() -> bool:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{http_port}/metrics") as r,
            ):
                text = await r.text()
            # multi-process metrics: a scrape reports the work of every process
            lines = [
                ln
                for ln in text.splitlines()
                if ln.startswith('digipoort_stage_messages_total{outcome="ok",stage="validate"}')
            ]
            return bool(lines) and float(lines[0].split()[-1]) >= 1

        await wait_for(metrics_of_both, timeout=30, what="metrics from the workers")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 60)
    assert rc == 0
    # whatever was in flight was finished or returned to the queue: restart and complete
    await env.start_gateway(components=("validator", "router"), serve_http=False)
    conn = await env.conn()

    async def all_delivered() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM statuses WHERE code = '400' AND recipient_oin = $1",
            BELASTINGDIENST,
        )
        return n == len(accepted)

    await wait_for(all_delivered, timeout=60, what="all 300 delivered exactly once")
    dupes = await conn.fetchval("SELECT count(*) - count(DISTINCT kenmerk) FROM deliveries")
    assert dupes == 0
