"""Monthly partitions of the history tables: create ahead, find expired months, export,
purge (docs/reliability.md, "Retention and partitions").

Every table listed in ``history_tables`` (migration 012; ``pop3_mailbox`` added by 017) is
RANGE-partitioned by kenmerk; kenmerken are UUIDv7, so a month is the uuid range
[bound(month), bound(next month)).
A month is purged by detaching its partition of every table (a catalog change under a
short ``lock_timeout``, retried) and dropping the detached tables: no row-by-row delete.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from digipoort import metrics
from digipoort.config import HistoryConfig
from digipoort.payloads import PayloadStore

log = structlog.get_logger(__name__)

LEGACY_SUFFIXES = ("legacy", "legacy_hi")
# Any fixed number: one maintenance run or purge at a time (component, CLI, processes).
HISTORY_LOCK = 7_420_012
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_LOCK_RETRIES = 50


class HistoryError(Exception):
    """An operator asked for something that cannot be done (unknown or current month)."""


@dataclass(frozen=True, order=True)
class Month:
    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        m = _MONTH.match(text.strip())
        if m is None or not 1 <= int(m.group(2)) <= 12:
            raise HistoryError(f"not a month (YYYY-MM): {text!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def of(cls, when: datetime | date) -> Month:
        return cls(when.year, when.month)

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def suffix(self) -> str:
        return f"p{self.year:04d}{self.month:02d}"

    def plus(self, months: int) -> Month:
        n = self.year * 12 + (self.month - 1) + months
        return Month(n // 12, n % 12 + 1)

    @property
    def start(self) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=UTC)

    @property
    def end(self) -> datetime:
        return self.plus(1).start


def kenmerk_bound(when: datetime) -> UUID:
    """The smallest UUIDv7 of the millisecond ``when`` (same as SQL
    ``digipoort_kenmerk_bound``)."""
    ms = int(when.timestamp() * 1000)
    return UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80)


#: the upper end of the monthly partitions: uuid4 kenmerken above it are in T_legacy_hi
#: (migration 012)
LEGACY_HI_BOUND = kenmerk_bound(datetime(2100, 1, 1, tzinfo=UTC))


def month_bounds(month: Month) -> tuple[UUID, UUID]:
    return kenmerk_bound(month.start), kenmerk_bound(month.end)


async def history_tables(conn: asyncpg.Connection | asyncpg.Pool) -> list[str]:
    """The partitioned tables, in purge order (children first, envelopes last)."""
    rows = await conn.fetch("SELECT name FROM history_tables ORDER BY purge_rank")
    return [r["name"] for r in rows]


async def partitions(conn: asyncpg.Connection | asyncpg.Pool) -> dict[str, set[str]]:
    """Partition suffix (``p202611``, ``legacy``, ``default``…) -> tables that have it."""
    rows = await conn.fetch(
        "SELECT p.relname AS parent, c.relname AS part FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " JOIN history_tables h ON h.name = p.relname"
    )
    found: dict[str, set[str]] = {}
    for r in rows:
        suffix = r["part"][len(r["parent"]) + 1 :]
        found.setdefault(suffix, set()).add(r["parent"])
    return found


def months_of(found: Mapping[str, set[str]]) -> list[Month]:
    out = []
    for suffix in found:
        if re.fullmatch(r"p\d{6}", suffix):
            out.append(Month(int(suffix[1:5]), int(suffix[5:7])))
    return sorted(out)


async def _with_short_lock(
    conn: asyncpg.Connection, lock_timeout_ms: int, statements: list[tuple[str, tuple[Any, ...]]]
) -> None:
    """Run ``statements`` in one transaction under ``lock_timeout``; retry when a lock was
    not granted in time, so intake waits at most ``lock_timeout_ms`` per attempt."""
    for attempt in range(_LOCK_RETRIES):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                for sql, args in statements:
                    await conn.execute(sql, *args)
            return
        except asyncpg.LockNotAvailableError:
            await asyncio.sleep(min(0.05 * (attempt + 1), 1.0))
    raise HistoryError(f"lock not granted after {_LOCK_RETRIES} attempts")


async def create_month(
    conn: asyncpg.Connection, month: Month, *, lock_timeout_ms: int = 200
) -> int:
    """Create the partition of ``month`` in every history table that lacks it; rows the
    default partition holds in its range (old uuid4 kenmerken, or inserts made while the
    partition was missing) move into it. Returns the number of partitions created."""
    lo, hi = month_bounds(month)
    found = await partitions(conn)
    if hi > LEGACY_HI_BOUND:
        raise HistoryError(f"month {month} lies beyond the partitioned range (2100)")
    created = 0
    for table in await history_tables(conn):
        if table in found.get(month.suffix, set()):
            continue
        part, default = f"{table}_{month.suffix}", f"{table}_default"
        # storage parameters (e.g. fillfactor) live on partitions, not on the parent: a new
        # partition takes those of the default partition
        options = await conn.fetchval(
            "SELECT array_to_string(reloptions, ', ') FROM pg_class WHERE relname = $1", default
        )
        with_options = f" WITH ({options})" if options else ""
        await _with_short_lock(
            conn,
            lock_timeout_ms,
            [
                (f'LOCK TABLE "{default}" IN ACCESS EXCLUSIVE MODE', ()),
                (
                    f'CREATE TABLE "{part}" (LIKE "{table}" INCLUDING DEFAULTS'
                    f" INCLUDING STORAGE){with_options}",
                    (),
                ),
                (
                    f'WITH moved AS (DELETE FROM "{default}" WHERE kenmerk >= $1 AND kenmerk < $2'  # noqa: S608
                    f' RETURNING *) INSERT INTO "{part}" SELECT * FROM moved',
                    (lo, hi),
                ),
                (
                    f'ALTER TABLE "{table}" ATTACH PARTITION "{part}"'
                    f" FOR VALUES FROM ('{lo}') TO ('{hi}')",
                    (),
                ),
            ],
        )
        created += 1
    if created:
        metrics.HISTORY_PARTITIONS_CREATED.inc(created)
        log.info("history partitions created", month=str(month), tables=created)
    return created


async def ensure_ahead(
    conn: asyncpg.Connection,
    *,
    now: datetime | None = None,
    ahead: int = 3,
    lock_timeout_ms: int = 200,
) -> list[Month]:
    """Partitions for the current month and ``ahead`` months after it exist afterwards."""
    current = Month.of(now or datetime.now(UTC))
    made = []
    for i in range(ahead + 1):
        m = current.plus(i)
        if await create_month(conn, m, lock_timeout_ms=lock_timeout_ms):
            made.append(m)
    return made


async def analyze_parents(conn: asyncpg.Connection) -> None:
    """ANALYZE the partitioned parents: autovacuum analyzes partitions but never a
    partitioned parent, whose statistics the planner (and the portal's status-code
    estimate) use for queries over all months. Samples; seconds even at 10 M rows."""
    for table in await history_tables(conn):
        await conn.execute(f'ANALYZE "{table}"')


@dataclass(frozen=True)
class MonthState:
    """What decides whether a month (or a legacy partition) may be purged."""

    name: str  # "2026-01" or "legacy" / "legacy_hi"
    suffix: str
    envelopes: int
    last_activity: datetime | None
    berichtsoorten: tuple[str, ...]
    pending_deliveries: int

    def expires_at(self, retention: RetentionPolicy) -> datetime | None:
        if self.last_activity is None:
            return None
        months = max(
            (retention.months_for(s) for s in self.berichtsoorten), default=retention.default
        )
        return _add_months(self.last_activity, months)


@dataclass(frozen=True)
class RetentionPolicy:
    """Months after the last status per berichtsoort (default 13)."""

    default: int = 13
    per_berichtsoort: Mapping[str, int] | None = None

    @classmethod
    def from_config(cls, config: HistoryConfig) -> RetentionPolicy:
        return cls(
            default=config.retention_months,
            per_berichtsoort=config.retention_months_per_berichtsoort,
        )

    def months_for(self, berichtsoort: str) -> int:
        return (self.per_berichtsoort or {}).get(berichtsoort, self.default)

    @property
    def shortest(self) -> int:
        return min([self.default, *(self.per_berichtsoort or {}).values()])


def _add_months(when: datetime, months: int) -> datetime:
    m = Month.of(when).plus(months)
    day = min(when.day, 28)
    return when.replace(year=m.year, month=m.month, day=day)


async def month_state(conn: asyncpg.Connection | asyncpg.Pool, suffix: str) -> MonthState:
    """Counts and the last activity (last status, or last envelope update) of one
    partition suffix. Reads only that month's partitions."""
    env, st, dl = f'"envelopes_{suffix}"', f'"statuses_{suffix}"', f'"deliveries_{suffix}"'
    row = await conn.fetchrow(
        f"SELECT (SELECT count(*) FROM {env}) AS n,"  # noqa: S608
        f" greatest((SELECT max(tijdstempel) FROM {st}), (SELECT max(updated_at) FROM {env}))"
        f" AS last,"
        f" (SELECT array_agg(DISTINCT berichtsoort) FROM {env}) AS soorten,"
        f" (SELECT count(*) FROM {dl} WHERE state = 'pending') AS pending"
    )
    assert row is not None
    name = suffix if suffix in LEGACY_SUFFIXES else f"{suffix[1:5]}-{suffix[5:7]}"
    return MonthState(
        name=name,
        suffix=suffix,
        envelopes=row["n"],
        last_activity=row["last"],
        berichtsoorten=tuple(row["soorten"] or ()),
        pending_deliveries=row["pending"],
    )


def suffix_for(name: str) -> str:
    return name if name in LEGACY_SUFFIXES else Month.parse(name).suffix


async def expired(
    conn: asyncpg.Connection | asyncpg.Pool,
    retention: RetentionPolicy,
    *,
    now: datetime | None = None,
) -> list[MonthState]:
    """Months (and legacy partitions) whose every envelope is past its retention and that
    have no pending delivery. The current month is never expired."""
    now = now or datetime.now(UTC)
    current = Month.of(now)
    found = await partitions(conn)
    # A month cannot expire before its start plus the shortest retention: only those
    # months are read (reading a month scans its statuses once).
    shortest = retention.shortest
    candidates = [
        m.suffix for m in months_of(found) if m < current and _add_months(m.start, shortest) < now
    ]
    migrated = await conn.fetchval(
        "SELECT applied_at FROM schema_migrations WHERE name LIKE '012_%'"
    )
    if migrated is None or _add_months(migrated, shortest) < now:
        candidates += [s for s in LEGACY_SUFFIXES if s in found]
    out = []
    for suffix in candidates:
        state = await month_state(conn, suffix)
        if state.pending_deliveries:
            continue
        if state.envelopes == 0 and suffix not in LEGACY_SUFFIXES:
            # an empty past month: its end is its last possible activity
            month = Month.parse(state.name)
            if _add_months(month.end, retention.default) < now:
                out.append(state)
            continue
        exp = state.expires_at(retention)
        if exp is not None and exp < now:
            out.append(state)
    return out


async def export_month(conn: asyncpg.Connection, name: str, directory: Path) -> Path:
    """Write every table's partition of ``name`` as gzipped CSV (with header) into
    ``directory/<name>/``, plus ``manifest.json`` (row counts, SHA-256 of each file)."""
    suffix = suffix_for(name)
    found = await partitions(conn)
    if suffix not in found:
        raise HistoryError(f"no partition for {name}")
    out = directory / name
    out.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "month": name,
        "exported_at": datetime.now(UTC).isoformat(),
        "tables": {},
    }
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for table in sorted(found[suffix]):
            path = out / f"{table}.csv.gz"
            with gzip.open(path, "wb") as fh:
                await conn.copy_from_query(
                    f'SELECT * FROM "{table}_{suffix}"',  # noqa: S608
                    output=_Sink(fh),
                    format="csv",
                    header=True,
                )
            rows = await conn.fetchval(f'SELECT count(*) FROM "{table}_{suffix}"')  # noqa: S608
            manifest["tables"][table] = {"rows": rows, "file": path.name, "sha256": _sha256(path)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("history exported", month=name, directory=str(out))
    return out


class _Sink:
    def __init__(self, fh: Any) -> None:
        self._fh = fh

    async def __call__(self, data: bytes) -> None:
        self._fh.write(data)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class PurgeResult:
    name: str
    envelopes: int
    statuses: int
    payloads: int
    seconds: float


async def purge_month(
    conn: asyncpg.Connection,
    name: str,
    store: PayloadStore,
    *,
    actor: str = "retention",
    export_path: Path | None = None,
    lock_timeout_ms: int = 200,
    now: datetime | None = None,
    grace_seconds: float = 3600.0,
) -> PurgeResult:
    """Detach the partitions of ``name`` in every history table (short locks), drop them,
    then remove the payload files only its documents used. The current month is refused.
    A crash after the drop can leave payload files no row refers to (harmless; removed
    by hand with the store listing)."""
    suffix = suffix_for(name)
    if suffix not in LEGACY_SUFFIXES and Month.parse(name) >= Month.of(now or datetime.now(UTC)):
        raise HistoryError(f"{name} is the current or a future month")
    found = await partitions(conn)
    tables = [t for t in await history_tables(conn) if t in found.get(suffix, set())]
    if not tables:
        raise HistoryError(f"no partition for {name}")
    started = time.perf_counter()
    counts: dict[str, int] = {}
    for t in ("envelopes", "statuses"):
        if t in tables:
            counts[t] = await conn.fetchval(f'SELECT count(*) FROM "{t}_{suffix}"')  # noqa: S608
    for table in tables:  # children first, envelopes last
        await _with_short_lock(
            conn,
            lock_timeout_ms,
            [(f'ALTER TABLE "{table}" DETACH PARTITION "{table}_{suffix}"', ())],
        )
    # payload files only this month used (content-addressed: other months may share them)
    shas: list[str] = []
    if "documents" in tables:
        shas = [
            r["sha256"]
            for r in await conn.fetch(
                f'SELECT DISTINCT d.sha256 FROM "documents_{suffix}" d'  # noqa: S608
                " WHERE d.data IS NULL AND NOT EXISTS (SELECT 1 FROM documents o"
                " WHERE o.sha256 = d.sha256 AND o.data IS NULL)"
            )
        ]
    for table in tables:
        await conn.execute(f'DROP TABLE "{table}_{suffix}"')
    payloads = 0
    for sha in shas:
        # a submission storing the same content right now refreshed the file's mtime
        # (deduplication) before its envelope is committed: leave such files
        age = await store.age_seconds(sha)
        if age is not None and age < grace_seconds:
            continue
        await store.delete(sha)
        payloads += 1
    seconds = time.perf_counter() - started
    result = PurgeResult(
        name=name,
        envelopes=counts.get("envelopes", 0),
        statuses=counts.get("statuses", 0),
        payloads=payloads,
        seconds=seconds,
    )
    await conn.execute(
        "INSERT INTO history_purges (month, actor, envelopes, statuses, payloads, export_path)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        name,
        actor,
        result.envelopes,
        result.statuses,
        result.payloads,
        str(export_path) if export_path else None,
    )
    metrics.HISTORY_PURGED.inc()
    metrics.HISTORY_PURGED_ENVELOPES.inc(result.envelopes)
    metrics.HISTORY_PURGE_SECONDS.observe(seconds)
    log.info(
        "history month purged",
        month=name,
        actor=actor,
        envelopes=result.envelopes,
        statuses=result.statuses,
        payloads=payloads,
        seconds=round(seconds, 3),
        export=str(export_path) if export_path else None,
    )
    return result


def month_of_kenmerk(kenmerk: UUID) -> Month:
    """The month a UUIDv7 kenmerk was made in (meaningless for an old uuid4)."""
    ms = kenmerk.int >> 80
    return Month.of(datetime.fromtimestamp(ms / 1000, UTC))
