"""Open-model load generator: a fixed arrival rate over WUS, SMTP, FTP or a mix.

    .venv/bin/python -m loadtests.run --koppelvlak wus --rate 100 --duration 30 --size 2000
    .venv/bin/python -m loadtests.run --koppelvlak mix --rate 30 --duration 20
    .venv/bin/python -m loadtests.run --koppelvlak wus --rate 50 --duration 60 \\
        --target https://gateway.example:8443 --config remote.toml

Submission ``i`` is due at ``start + i / rate``, whatever happened to the ones before (open
model). Accept latency is measured from that *intended* time to the kenmerk, end-to-end
latency from the intended time to status 400 for the recipient (its timestamp in the
database): a stalled gateway cannot hide the queueing it causes (no coordinated omission).

``--target local`` (default): a throw-away database, vhost and test PKI; the gateway runs
as in production in separate processes, ``serve --components
intake,sweeper,wus,smtp,ftp --processes P`` and ``serve --components stages``.
CPU-seconds of all gateway processes (user+sys from /proc/<pid>/stat, children included)
are read before and after the run. ``--baseline`` also measures the bare mutual-TLS echo
(aiohttp, same certificates and bodies) in the same run.

``--target URL`` (remote): the WUS base URL of a running gateway; ``--config`` names a
digipoort.toml whose database/broker settings are used for the verification and whose PKI
directory holds the sender's certificate (``<pki>/<OIN>.crt/.key``, ``ca.crt``).

At the end every accepted envelope is checked: exactly one 400 per (kenmerk, recipient) in
the status history and one message per kenmerk in each recipient queue (the queues are
drained: run against a gateway whose recipient queues nobody else reads).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import aio_pika
import aiohttp
import asyncpg
from hdrh.histogram import HdrHistogram

from adapters.wus.client import WusClient
from adapters.wus.wsdl import AANLEVER_PATH
from digipoort import logging as dlogging
from digipoort.broker import aflever_queue
from digipoort.config import Settings, load_settings
from digipoort.devenv import ALFA, SAMPLE_PARTICIPANTS
from digipoort.pki.devpki import DevParticipant, create_dev_pki
from loadtests import cost as cost_
from loadtests.wus import ACTION, sign_all, wait_port
from tests.support import (
    SAMPLES,
    create_env,
    create_template,
    destroy_env,
    free_port,
    wait_for,
)

KENMERK = re.compile(rb"kenmerk>([0-9a-f-]{36})<")
KENMERK_TEXT = re.compile(r"kenmerk ([0-9a-f-]{36})")
BERICHTSOORT = {"wus": "Omzetbelasting", "smtp": "CBS-Detailhandel", "ftp": "CBS-Detailhandel"}


def ms(h: HdrHistogram, p: float) -> float:
    return h.get_value_at_percentile(p) / 1000.0 if h.get_total_count() else float("nan")


# --------------------------------------------------------------------------- CPU


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime ticks) of ``pid``."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def cpu_seconds(roots: list[int]) -> float:
    """user+sys seconds of ``roots`` and all their living descendants."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    wanted = set(roots)
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in table.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    ticks = sum(table[p][1] for p in wanted if p in table)
    return ticks / os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- submitters


@dataclass
class Result:
    koppelvlak: str
    intended_wall: float
    accept_us: int
    kenmerk: UUID | None
    error: str | None = None


@dataclass
class Run:
    results: list[Result] = field(default_factory=list)
    accept: dict[str, HdrHistogram] = field(default_factory=dict)

    def record(self, r: Result) -> None:
        self.results.append(r)
        h = self.accept.setdefault(r.koppelvlak, HdrHistogram(1, 600_000_000, 3))
        h.record_value(max(1, r.accept_us))


def document(size: int, sample: str) -> bytes:
    content = (SAMPLES / sample).read_bytes()
    if size > len(content):
        content = content.replace(b"</", b"<!--" + b"x" * (size - len(content)) + b"--></", 1)
    return content


class Submitter:
    koppelvlak = ""

    async def prepare(self, count: int) -> None:
        """Work done before the clock starts (e.g. signing)."""

    async def submit(self, i: int) -> UUID:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class WusSubmitter(Submitter):
    koppelvlak = "wus"

    def __init__(self, url: str, pki: Path, size: int, connections: int = 64) -> None:
        self.url = url
        self.connections = connections
        self.client = WusClient(url, pki / f"{ALFA}.crt", pki / f"{ALFA}.key", pki / "ca.crt")
        self.size = size
        self.bodies: list[bytes] = []
        self.http: aiohttp.ClientSession | None = None

    async def prepare(self, count: int) -> None:
        self.bodies = await asyncio.to_thread(sign_all, self.client, count, self.size)
        if self.http is not None:
            await self.http.close()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client.ssl, limit=self.connections)
        )

    async def submit(self, i: int) -> UUID:
        assert self.http is not None
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ACTION}"'}
        async with self.http.post(
            self.url + AANLEVER_PATH, data=self.bodies[i], headers=headers
        ) as r:
            body = await r.read()
        m = KENMERK.search(body)
        if r.status != 200 or m is None:
            raise RuntimeError(f"HTTP {r.status}: {body[:200]!r}")
        return UUID(m.group(1).decode())

    async def close(self) -> None:
        if self.http is not None:
            await self.http.close()
        await self.client.close()


class SmtpSubmitter(Submitter):
    koppelvlak = "smtp"

    def __init__(self, settings: Settings, pki: Path, size: int, workdir: Path) -> None:
        self.settings = settings
        self.pki = pki
        self.path = workdir / "cbs-detailhandel.xml"
        self.path.write_bytes(document(size, "cbs-detailhandel.xml"))

    def _mail(self, i: int) -> EmailMessage:
        from adapters.smtp.client import build_mail

        # a distinct aanleverkenmerk per mail: identical ones would be resubmissions
        return build_mail(
            sender_oin=ALFA,
            to=f"cbs-detailhandel@{self.settings.smtp.domain}",
            file=self.path,
            mime_type="text/xml",
            ontvanger=None,
            aanleverkenmerk=f"lt-{os.getpid()}-{i}",
        )

    async def submit(self, i: int) -> UUID:
        from adapters.smtp.client import submit_mail

        s = self.settings.smtp
        kenmerk = await asyncio.to_thread(
            submit_mail,
            self._mail(i),
            host="127.0.0.1" if s.host == "0.0.0.0" else s.host,
            port=s.port,
            cert=self.pki / f"{ALFA}.crt",
            key=self.pki / f"{ALFA}.key",
            ca=self.pki / "ca.crt",
        )
        return UUID(kenmerk)


class FtpSubmitter(Submitter):
    koppelvlak = "ftp"

    def __init__(self, settings: Settings, pki: Path, size: int, workdir: Path) -> None:
        self.settings = settings
        self.pki = pki
        self.path = workdir / "cbs-detailhandel-ftp.xml"
        self.path.write_bytes(document(size, "cbs-detailhandel.xml"))

    def _upload(self, i: int) -> str:
        from adapters.ftp.client import FtpsClient

        s = self.settings.ftp
        client = FtpsClient(
            "127.0.0.1" if s.host == "0.0.0.0" else s.host,
            s.port,
            self.pki / f"{ALFA}.crt",
            self.pki / f"{ALFA}.key",
            self.pki / "ca.crt",
        )
        try:
            return client.upload(BERICHTSOORT["ftp"], self.path, name=f"lt-{os.getpid()}-{i}.xml")
        finally:
            client.close()

    async def submit(self, i: int) -> UUID:
        return UUID(await asyncio.to_thread(self._upload, i))


# --------------------------------------------------------------------------- driving


async def drive(subs: list[Submitter], rate: float, duration: float) -> tuple[Run, float]:
    """Open model: submission i at start + i/rate, round-robin over ``subs``."""
    count = max(1, int(rate * duration))
    per_sub = Counter(subs[i % len(subs)].koppelvlak for i in range(count))
    for sub in subs:
        await sub.prepare(per_sub[sub.koppelvlak])
    run = Run()
    start = time.perf_counter() + 0.2
    start_wall = time.time() + 0.2
    index = Counter[str]()

    async def one(i: int, sub: Submitter, n: int) -> None:
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        kenmerk: UUID | None = None
        error: str | None = None
        try:
            kenmerk = await sub.submit(n)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
        run.record(
            Result(
                sub.koppelvlak,
                start_wall + i / rate,
                int((time.perf_counter() - due) * 1e6),
                kenmerk,
                error,
            )
        )

    tasks = []
    for i in range(count):
        sub = subs[i % len(subs)]
        tasks.append(asyncio.create_task(one(i, sub, index[sub.koppelvlak])))
        index[sub.koppelvlak] += 1
    await asyncio.gather(*tasks)
    return run, time.perf_counter() - start


async def echo_capacity(
    client: WusClient, url: str, bodies: list[bytes], seconds: float = 5.0, concurrency: int = 64
) -> float:
    """Closed-loop saturation of the bare mutual-TLS echo: requests/s."""
    headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{ACTION}"'}
    done = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=client.ssl, limit=concurrency)
    ) as http:
        end = time.perf_counter() + seconds

        async def worker(k: int) -> None:
            nonlocal done
            i = k
            while time.perf_counter() < end:
                async with http.post(
                    url + AANLEVER_PATH, data=bodies[i % len(bodies)], headers=headers
                ) as r:
                    await r.read()
                done += 1
                i += concurrency

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return done / (time.perf_counter() - t0)


# --------------------------------------------------------------------------- verification


def expected_recipients(settings: Settings) -> dict[str, list[str]]:
    return {b.name: sorted({*b.recipients, *b.copies}) for b in settings.registry.berichtsoorten}


async def verify(
    settings: Settings,
    run: Run,
    timeout: float,
    at_all_400: Callable[[], Awaitable[None]] | None = None,
) -> tuple[dict[str, HdrHistogram], dict[str, int], float]:
    """Wait until every accepted envelope has its 400s (then ``at_all_400``: the cost
    counters are read before the verification's own queries and queue drain), count them
    and the queue messages; returns (end-to-end histograms, problem counts, seconds
    waited)."""
    recipients = expected_recipients(settings)
    want: dict[UUID, tuple[str, list[str], float]] = {}
    for r in run.results:
        if r.kenmerk is not None:
            want[r.kenmerk] = (
                r.koppelvlak,
                recipients[BERICHTSOORT[r.koppelvlak]],
                r.intended_wall,
            )
    expected_400 = sum(len(v[1]) for v in want.values())
    conn = await asyncpg.connect(settings.database.url)
    t0 = time.perf_counter()
    try:
        kenmerken = list(want)

        async def all_there() -> bool:
            n = await conn.fetchval(
                "SELECT count(*) FROM statuses WHERE code = '400' AND kenmerk = ANY($1::uuid[])",
                kenmerken,
            )
            return int(n) >= expected_400

        try:
            await wait_for(all_there, timeout=timeout, what="every 400")
        except AssertionError:
            pass
        waited = time.perf_counter() - t0
        if at_all_400 is not None:
            await at_all_400()
        rows = await conn.fetch(
            "SELECT kenmerk, recipient_oin, count(*) AS n, min(tijdstempel) AS t FROM statuses"
            " WHERE code = '400' AND kenmerk = ANY($1::uuid[]) GROUP BY kenmerk, recipient_oin",
            kenmerken,
        )
    finally:
        await conn.close()
    e2e: dict[str, HdrHistogram] = {}
    got: dict[tuple[UUID, str], int] = {}
    for row in rows:
        got[(row["kenmerk"], row["recipient_oin"])] = int(row["n"])
        kv, _, intended = want[row["kenmerk"]]
        delay = row["t"].replace(tzinfo=row["t"].tzinfo or UTC).timestamp() - intended
        e2e.setdefault(kv, HdrHistogram(1, 3_600_000_000, 3)).record_value(max(1, int(delay * 1e6)))
    problems = {
        "missing_400": 0,
        "duplicate_400": 0,
        "missing_in_queue": 0,
        "duplicate_in_queue": 0,
    }
    per_queue: dict[str, set[UUID]] = {}
    for k, (_, oins, _) in want.items():
        for oin in oins:
            n = got.get((k, oin), 0)
            problems["missing_400"] += n == 0
            problems["duplicate_400"] += max(0, n - 1)
            per_queue.setdefault(oin, set()).add(k)
    amqp = await aio_pika.connect(settings.broker.url)
    try:
        ch = await amqp.channel()
        for oin, kenmerken_of in per_queue.items():
            seen = Counter[UUID]()
            q = await ch.get_queue(aflever_queue(oin), ensure=False)
            while True:
                msg = await q.get(fail=False, no_ack=True)
                if msg is None:
                    break
                if msg.message_id:
                    seen[UUID(msg.message_id)] += 1
            problems["missing_in_queue"] += sum(1 for k in kenmerken_of if seen[k] == 0)
            problems["duplicate_in_queue"] += sum(max(0, seen[k] - 1) for k in kenmerken_of)
    finally:
        await amqp.close()
    return e2e, problems, waited


# --------------------------------------------------------------------------- main


async def start_servers(tmp: Path) -> tuple[Any, Any]:
    """A RabbitMQ node and a PostgreSQL cluster of the run's own (tests/servers.py), so
    every CPU tick and counter of theirs belongs to the run: management statistics every
    second, pg_stat_statements preloaded, fsync on as in production."""
    from tests.servers import PgCluster, RabbitNode

    node = RabbitNode(tmp / "rabbit")
    with (node.dir / "rabbitmq.conf").open("a") as conf:
        conf.write("collect_statistics_interval = 1000\n")
    base = Path(tempfile.mkdtemp(prefix="dpload-pg-"))
    pg = PgCluster(
        base,
        settings={
            "fsync": "on",
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track": "all",
        },
    )
    try:
        await pg.start()
        await node.start()
    except BaseException:
        await pg.remove()
        await node.remove()
        raise
    return node, pg


async def start_local(
    tmp: Path,
    processes: int,
    kinds: list[str],
    servers: tuple[Any, Any] | None = None,
    stage_components: str = "stages",
) -> tuple[Any, Path, list[asyncio.subprocess.Process]]:
    pki = tmp / "pki"
    create_dev_pki(pki, [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS])
    tpl = f"dpload_tpl_{os.getpid()}"
    if servers is not None:
        node, pg = servers
        await create_template(tpl, pg_admin=pg.admin_url)
        env = await create_env(
            tmp, pki, tpl, pg_admin=pg.admin_url, amqp=node.amqp_url, mgmt=node.management_url
        )
    else:
        await create_template(tpl)
        env = await create_env(tmp, pki, tpl)
    env_vars = {**os.environ, "DIGIPOORT_LOG_LEVEL": "warning", "DIGIPOORT_HTTP__PORT": "0"}
    env_vars.pop("PROMETHEUS_MULTIPROC_DIR", None)
    cli = [sys.executable, "-m", "digipoort.cli", "serve", "--config", str(env.config_path)]
    front_components = ["intake", "sweeper", *(k for k in kinds if k in ("wus", "smtp"))]
    procs = [
        await asyncio.create_subprocess_exec(
            *cli,
            "--components",
            ",".join(front_components),
            "--processes",
            str(processes),
            env=env_vars,
        ),
        await asyncio.create_subprocess_exec(*cli, "--components", stage_components, env=env_vars),
    ]
    if "ftp" in kinds:  # the FTP listener does not share its port: one process of its own
        procs.append(
            await asyncio.create_subprocess_exec(*cli, "--components", "intake,ftp", env=env_vars)
        )
    for k in kinds:
        await wait_port(getattr(env.settings, k).port)
    return env, pki, procs


async def main(args: argparse.Namespace) -> int:
    dlogging.configure("warning", json=True)
    kinds = ["wus", "smtp", "ftp"] if args.koppelvlak == "mix" else [args.koppelvlak]
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=128))
    cost: cost_.Cost | None = None
    echo_cpu_ms = float("nan")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        procs: list[asyncio.subprocess.Process] = []
        env: Any = None
        echo: asyncio.subprocess.Process | None = None
        servers: tuple[Any, Any] | None = None
        if args.target == "local":
            if not args.shared_servers:
                servers = await start_servers(tmp)
            env, pki, procs = await start_local(
                tmp, args.processes, kinds, servers, args.stage_components
            )
            settings = env.settings
            wus_url = settings.wus.public_url
        else:
            if args.config is None:
                print("--target URL needs --config (database, broker, PKI of the sender)")
                return 2
            settings = load_settings(args.config)
            pki = settings.resolve(settings.pki.ca_file).parent
            wus_url = args.target
            host = urlsplit(args.target).hostname or "127.0.0.1"
            settings.smtp.host = host
            settings.ftp.host = host
        try:
            subs: list[Submitter] = []
            for k in kinds:
                if k == "wus":
                    subs.append(WusSubmitter(wus_url, pki, args.size, args.connections))
                elif k == "smtp":
                    subs.append(SmtpSubmitter(settings, pki, args.size, tmp))
                else:
                    subs.append(FtpSubmitter(settings, pki, args.size, tmp))
            # warm-up: connections, caches, the first envelopes through every stage
            await drive(subs, min(args.rate, 20.0), 1.0)
            echo_rate = float("nan")
            if args.baseline and "wus" in kinds:
                port = free_port()
                echo = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "loadtests.wus",
                    "--echo-server",
                    str(port),
                    "--pki",
                    str(pki),
                )
                await wait_port(port)
                wus = next(s for s in subs if isinstance(s, WusSubmitter))
                e0 = cpu_seconds([echo.pid])
                echo_rate = await echo_capacity(wus.client, f"https://localhost:{port}", wus.bodies)
                echo_cpu_ms = 1000 * (cpu_seconds([echo.pid]) - e0) / max(1.0, echo_rate * 5.0)
            groups = [
                cost_.Group("front", roots=[procs[0].pid]) if procs else None,
                cost_.Group("stages", roots=[procs[1].pid]) if procs else None,
                cost_.Group("ftp", roots=[procs[2].pid]) if len(procs) > 2 else None,
            ]
            if servers is not None:
                node, pg = servers
                groups.append(cost_.Group("postgres", roots=[pg.postmaster_pid or 0], server=True))
                groups.append(cost_.Group("rabbitmq", roots=[node._proc.pid], server=True))
            groups.append(cost_.Group("loadgen", roots=[os.getpid()], descend=False))
            cgroups = [g for g in groups if g is not None]
            roots = [p.pid for p in procs]
            idle_seconds = min(args.idle, args.duration) if servers is not None else 0.0
            idle_cpu: dict[str, float] = {}
            if idle_seconds:
                i0 = cost_.cpu_snapshot(cgroups)
                await asyncio.sleep(idle_seconds)
                idle_cpu = cost_.diff(i0, cost_.cpu_snapshot(cgroups))
            amqp0 = pg0 = None
            if servers is not None:
                node, pg = servers
                await cost_.enable_statements(pg.admin_url, env.name)
                amqp0 = await cost_.amqp_settled(node.management_url)
                pg0 = await cost_.pg_stats(pg.admin_url, env.name)
            cpu0 = cpu_seconds(roots)
            c0 = cost_.cpu_snapshot(cgroups)
            t_run = time.perf_counter()
            counters: dict[str, Any] = {}

            async def at_all_400() -> None:
                counters["cpu"] = cost_.diff(c0, cost_.cpu_snapshot(cgroups))
                counters["seconds"] = time.perf_counter() - t_run
                if servers is not None:
                    node, pg = servers
                    counters["amqp"] = await cost_.amqp_settled(node.management_url)
                    counters["pg"] = await cost_.pg_stats(pg.admin_url, env.name)

            run, elapsed = await drive(subs, args.rate, args.duration)
            cpu1 = cpu_seconds(roots)
            e2e, problems, waited = await verify(settings, run, args.drain_timeout, at_all_400)
            for s in subs:
                await s.close()
            if procs and "cpu" in counters:
                accepted_n = sum(1 for r in run.results if r.kenmerk is not None)
                amqp_d = pg_commits = pg_calls = None
                statements: dict[str, tuple[int, int]] = {}
                if amqp0 is not None and pg0 is not None:
                    a1 = counters["amqp"]
                    amqp_d = {k: a1[k] - amqp0.get(k, 0) for k in a1}
                    p1: cost_.PgStats = counters["pg"]
                    pg_commits = p1.commits - pg0.commits
                    if p1.calls is not None and pg0.calls is not None:
                        statements = cost_.stat_delta(pg0.statements, p1.statements)
                        pg_calls = sum(c for c, _ in statements.values())
                cost = cost_.Cost(
                    cgroups,
                    counters["cpu"],
                    idle_cpu,
                    idle_seconds,
                    counters["seconds"],
                    accepted_n,
                    amqp_d,
                    pg_commits,
                    pg_calls,
                    statements,
                )
        finally:
            if echo is not None:
                echo.send_signal(signal.SIGTERM)
                await echo.wait()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                await p.wait()
            if env is not None:
                if servers is None:
                    await destroy_env(env)
                    conn = await asyncpg.connect(f"{env.db_url.rsplit('/', 1)[0]}/postgres")
                    await conn.execute(f'DROP DATABASE IF EXISTS "dpload_tpl_{os.getpid()}"')
                    await conn.close()
                else:
                    await env.stop()
            if servers is not None:
                await servers[1].remove()
                await servers[0].remove()
    accepted = [r for r in run.results if r.kenmerk is not None]
    errors = Counter(r.error for r in run.results if r.error)
    total = len(run.results)
    processes = args.processes if args.target == "local" else "n/a"
    print(
        f"koppelvlak {args.koppelvlak}  rate {args.rate:g}/s  duration {args.duration:g}s  "
        f"size {args.size} B  target {args.target}  gateway processes {processes}  "
        f"WUS connections {args.connections}  "
        f"cores {os.cpu_count()}"
    )
    print(
        f"{'koppelvlak':<10} {'sent':>6} {'accepted':>8} {'errors':>6} "
        f"{'accept p50':>10} {'p99':>8} {'max':>8} {'e2e p50':>9} {'p99':>8} {'max':>8}  (ms)"
    )
    for k in kinds:
        a = run.accept.get(k, HdrHistogram(1, 2, 3))
        e = e2e.get(k, HdrHistogram(1, 2, 3))
        sent = sum(1 for r in run.results if r.koppelvlak == k)
        ok = sum(1 for r in accepted if r.koppelvlak == k)
        print(
            f"{k:<10} {sent:>6} {ok:>8} {sent - ok:>6} {ms(a, 50):>10.1f} {ms(a, 99):>8.1f} "
            f"{ms(a, 100):>8.1f} {ms(e, 50):>9.1f} {ms(e, 99):>8.1f} {ms(e, 100):>8.1f}"
        )
    send_rate = total / elapsed if elapsed else 0.0
    e2e_rate = len(accepted) / (elapsed + waited) if accepted else 0.0
    print(
        f"offered {args.rate:g}/s, sent {send_rate:.1f}/s over {elapsed:.1f}s; "
        f"all 400s within {waited:.1f}s after the last send "
        f"(end-to-end throughput >= {e2e_rate:.1f} env/s)"
    )
    if procs:
        cpu = cpu1 - cpu0
        per = cpu / max(1, len(accepted))
        print(
            f"gateway CPU (user+sys, all gateway processes): {cpu:.1f} s = "
            f"{1000 * per:.2f} ms per envelope = {1000 * per:.2f} CPU-s per 1000 envelopes"
        )
    if echo_rate == echo_rate:  # not NaN
        print(
            f"bare mTLS echo capacity: {echo_rate:.0f} req/s (closed loop, 64 connections); "
            f"ratio sent/echo {send_rate / echo_rate:.3f}"
        )
    if echo_cpu_ms == echo_cpu_ms:
        print(f"bare mTLS echo CPU: {echo_cpu_ms:.2f} ms per request (echo server process)")
    if cost is not None:
        for line in cost.lines():
            print(line)
    for err, n in errors.most_common(5):
        print(f"error x{n}: {err}")
    print("verification: " + ", ".join(f"{k} {v}" for k, v in problems.items()))
    ok = not any(problems.values()) and not errors
    print("RESULT: " + ("OK (no loss, no duplicates)" if ok else "PROBLEMS"))
    return 0 if ok else 1


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtests.run", description=(__doc__ or "").splitlines()[0]
    )
    ap.add_argument("--koppelvlak", choices=["wus", "smtp", "ftp", "mix"], default="wus")
    ap.add_argument("--rate", type=float, default=50.0, help="arrivals per second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals")
    ap.add_argument("--size", type=int, default=0, help="document size in bytes (0: the sample)")
    ap.add_argument("--target", default="local", help="'local' or the WUS base URL")
    ap.add_argument("--config", type=Path, default=None, help="remote: digipoort.toml")
    ap.add_argument("--processes", type=int, default=2, help="local: ingress processes")
    ap.add_argument(
        "--connections",
        type=int,
        default=64,
        help="WUS: client connection pool size (keep-alive; a submission waits for a free "
        "connection, and that wait counts in its latency)",
    )
    ap.add_argument("--baseline", action="store_true", help="also measure the bare mTLS echo")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument(
        "--shared-servers",
        action="store_true",
        help="local: use the machine's PostgreSQL/RabbitMQ (no server CPU, AMQP or "
        "PostgreSQL counters) instead of a node and cluster of the run's own",
    )
    ap.add_argument(
        "--idle",
        type=float,
        default=20.0,
        help="seconds of the idle window before the run (at most --duration)",
    )
    ap.add_argument(
        "--stage-components",
        default="stages",
        help="local: the components of the stage process",
    )
    return ap


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parser().parse_args())))
