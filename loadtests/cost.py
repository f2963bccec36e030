"""Per-envelope cost of a load run: CPU per process group, AMQP and PostgreSQL operations.

Used by ``loadtests/run.py``. Everything is read as counters before and after the run:

* **CPU** (user+sys ticks from ``/proc/<pid>/stat``, living descendants included) of named
  process groups: the gateway's front, its stages, PostgreSQL (the postmaster of the run's
  own cluster and every backend/auxiliary process under it), RabbitMQ (the run's own node:
  the Erlang VM and its helpers) and the load generator. The servers' share is the delta
  over the run minus the delta over an idle window measured just before it (gateway
  running, no load), scaled to the run's length; the gateway's own idle cost is reported
  beside it (it is what a process spends on polling and timers).
* **AMQP** from the management API of the run's node (``/api/overview`` message_stats):
  publishes, confirms, deliveries (consumer deliveries + gets), acks. The management
  statistics lag by ``collect_statistics_interval`` (the run's node uses 1 s): the "after"
  reading waits until two readings a few intervals apart agree.
* **PostgreSQL** from ``pg_stat_database`` of the run's database: ``xact_commit``
  (committed transactions — each statement outside a transaction block counts as one),
  and, when ``pg_stat_statements`` is loaded (the run's own cluster preloads it), the
  number of statement executions (``calls``, BEGIN/COMMIT included). A statement sent
  with ``executemany`` counts once per row but costs one round trip, so ``calls`` is an
  upper bound of the round trips; the per-statement table shows which are which.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (ppid, utime+stime ticks, command line)."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), cmd)
    return table


@dataclass
class Group:
    """A named set of processes: given roots and/or command lines containing a marker,
    with all their descendants."""

    name: str
    roots: list[int] = field(default_factory=list)
    marker: str | None = None
    server: bool = False  # idle-corrected (a shared server's background work)
    descend: bool = True

    def seconds(self, table: dict[int, tuple[int, int, str]]) -> float:
        wanted = {p for p in self.roots if p in table}
        if self.marker is not None:
            wanted |= {p for p, (_, _, cmd) in table.items() if self.marker in cmd}
        changed = self.descend
        while changed:
            changed = False
            for pid, (ppid, _, _) in table.items():
                if ppid in wanted and pid not in wanted:
                    wanted.add(pid)
                    changed = True
        return sum(table[p][1] for p in wanted) / TICK


def cpu_snapshot(groups: list[Group]) -> dict[str, float]:
    table = _proc_table()
    return {g.name: g.seconds(table) for g in groups}


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a.get(k, 0.0) for k in b}


# --------------------------------------------------------------------------- AMQP

AMQP_STATS = ("publish", "confirm", "deliver", "deliver_get", "get", "ack", "redeliver")


async def amqp_stats(management_url: str) -> dict[str, int]:
    from urllib.parse import urlsplit

    parts = urlsplit(management_url)
    auth = aiohttp.BasicAuth(parts.username or "guest", parts.password or "guest")
    base = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    async with (
        aiohttp.ClientSession(auth=auth) as http,
        http.get(f"{base}/api/overview", timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        data = await r.json()
    stats = data.get("message_stats") or {}
    return {k: int(stats.get(k, 0)) for k in AMQP_STATS}


async def amqp_settled(management_url: str, interval: float = 1.0) -> dict[str, int]:
    """The management counters once they stopped moving (they lag by a stats interval)."""
    last = await amqp_stats(management_url)
    same = 0
    for _ in range(40):
        await asyncio.sleep(interval * 2.5)
        now = await amqp_stats(management_url)
        same = same + 1 if now == last else 0
        if same >= 2:  # unchanged over two intervals in a row (a loaded node lags)
            return now
        last = now
    return last


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgStats:
    commits: int
    rollbacks: int
    calls: int | None
    statements: dict[str, tuple[int, int]]  # query → (calls, rows)


async def pg_stats(admin_url: str, database: str) -> PgStats:
    conn = await asyncpg.connect(f"{admin_url}/{database}")
    try:
        # the statistics collector is per backend until it flushes: force our view fresh
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        row = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = $1",
            database,
        )
        calls: int | None = None
        statements: dict[str, tuple[int, int]] = {}
        has = await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'pg_stat_statements'"
        )
        if has:
            rows = await conn.fetch(
                "SELECT s.query, s.calls, s.rows FROM pg_stat_statements s"
                " JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1",
                database,
            )
            for r in rows:
                q = " ".join(str(r["query"]).split())[:110]
                c, n = statements.get(q, (0, 0))
                statements[q] = (c + int(r["calls"]), n + int(r["rows"]))
            calls = sum(c for c, _ in statements.values())
        assert row is not None
        return PgStats(int(row["xact_commit"]), int(row["xact_rollback"]), calls, statements)
    finally:
        await conn.close()


async def enable_statements(admin_url: str, database: str) -> bool:
    """Create the pg_stat_statements extension in the run's database (if preloaded)."""
    conn = await asyncpg.connect(f"{admin_url}/{database}")
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SELECT pg_stat_statements_reset()")
        return True
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


# --------------------------------------------------------------------------- report


@dataclass
class Cost:
    groups: list[Group]
    run_cpu: dict[str, float]
    idle_cpu: dict[str, float]
    idle_seconds: float
    run_seconds: float
    envelopes: int
    amqp: dict[str, int] | None
    pg_commits: int | None
    pg_calls: int | None
    statements: dict[str, tuple[int, int]]

    def corrected(self) -> dict[str, float]:
        """CPU seconds per group over the run; servers minus their idle rate."""
        out: dict[str, float] = {}
        scale = self.run_seconds / self.idle_seconds if self.idle_seconds else 0.0
        for g in self.groups:
            v = self.run_cpu[g.name]
            if g.server:
                v = max(0.0, v - self.idle_cpu.get(g.name, 0.0) * scale)
            out[g.name] = v
        return out

    def lines(self) -> list[str]:
        n = max(1, self.envelopes)
        cpu = self.corrected()
        out = [
            f"CPU per envelope ({self.envelopes} envelopes, run {self.run_seconds:.1f}s, "
            f"idle window {self.idle_seconds:.1f}s; servers idle-corrected):"
        ]
        total = 0.0
        for g in self.groups:
            idle_rate = 1000 * self.idle_cpu.get(g.name, 0.0) / max(1e-9, self.idle_seconds)
            per = 1000 * cpu[g.name] / n
            if g.name != "loadgen":
                total += per
            out.append(
                f"  {g.name:<10} {per:7.2f} ms/env   (idle {idle_rate:6.1f} ms/s"
                f"{', subtracted' if g.server else ''})"
            )
        out.append(f"  {'TOTAL':<10} {total:7.2f} ms/env   (gateway + PostgreSQL + RabbitMQ)")
        if self.amqp is not None:
            a = self.amqp
            out.append(
                "AMQP per envelope: "
                + ", ".join(f"{k} {a[k] / n:.2f}" for k in AMQP_STATS if k in a)
            )
        if self.pg_commits is not None:
            s = f"PostgreSQL per envelope: commits {self.pg_commits / n:.2f}"
            if self.pg_calls is not None:
                s += f", statement executions (pg_stat_statements calls) {self.pg_calls / n:.2f}"
            out.append(s)
        if self.statements:
            out.append("  statements per envelope (calls, rows):")
            top = sorted(self.statements.items(), key=lambda kv: -kv[1][0])[:24]
            for q, (c, r) in top:
                if c / n >= 0.01:
                    out.append(f"    {c / n:6.2f} {r / n:6.2f}  {q}")
        return out


def stat_delta(
    a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]
) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for q, (c, r) in b.items():
        c0, r0 = a.get(q, (0, 0))
        if c - c0:
            out[q] = (c - c0, r - r0)
    return out
