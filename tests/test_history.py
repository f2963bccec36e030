"""History partitions (issue 16 part 3): migration 012 converts a populated database,
partitions are created ahead, expired months are purged whole (rows and payloads) while
intake continues, retention per berichtsoort, export before purge."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest
import pytest_asyncio

from adapters.smtp import store as smtp_store
from adapters.wus import store as wus_store
from digipoort import db, partitions
from digipoort.config import HistoryConfig
from digipoort.envelope import new_kenmerk
from digipoort.partitions import Month, RetentionPolicy
from digipoort.payloads import FilePayloadStore
from digipoort.statusstore import history
from routing import retention
from tests.cli_support import cli
from tests.support import ALFA, PG_ADMIN, Env, aanlevering, wait_for

pytestmark = pytest.mark.asyncio(loop_scope="session")

CALLER = ALFA


async def _insert(
    conn: asyncpg.Connection | asyncpg.Pool,
    kenmerk: UUID,
    *,
    at: datetime,
    berichtsoort: str = "Omzetbelasting",
    sha256: str | None = None,
    state: str = "delivered",
) -> None:
    """One finished envelope with a document, two statuses and a delivery (raw SQL: the
    rows a month of real traffic leaves)."""
    await conn.execute(
        "INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin,"
        " berichtkenmerk, belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,"
        " tijdstempel_aangeleverd, stage, handed_off, updated_at)"
        " VALUES ($1, $2, 'wus', $3, 'bk', $3, 'OIN', 'Bedrijf', $4, 'gerouteerd', true, $4)",
        kenmerk,
        berichtsoort,
        CALLER,
        at,
    )
    await conn.execute(
        "INSERT INTO documents VALUES ($1, 0, 'text/xml', 'b.xml', 3, $2, $3)",
        kenmerk,
        sha256 or "0" * 64,
        None if sha256 else b"<a/>",
    )
    await conn.execute(
        "INSERT INTO statuses (kenmerk, code, tijdstempel, omschrijving)"
        " VALUES ($1, '100', $2, 'aangeleverd'), ($1, '400', $3, 'afgeleverd')",
        kenmerk,
        at,
        at + timedelta(minutes=5),
    )
    await conn.execute(
        "INSERT INTO deliveries (kenmerk, recipient_oin, state) VALUES ($1, 'r', $2)",
        kenmerk,
        state,
    )
    if kenmerk.version == 7:  # the getNieuweStatussen bookkeeping (after migration 012)
        await conn.execute(
            "INSERT INTO wus_statuses_returned (caller_oin, status_id, kenmerk)"
            " SELECT $2, id, kenmerk FROM statuses WHERE kenmerk = $1",
            kenmerk,
            CALLER,
        )


def _kenmerk_in(month: Month, day: int = 3) -> tuple[UUID, datetime]:
    at = month.start + timedelta(days=day - 1, hours=10)
    return new_kenmerk(int(at.timestamp() * 1000)), at


async def _count(conn: asyncpg.Connection, table: str, kenmerken: list[UUID]) -> int:
    n: int = await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE kenmerk = ANY($1::uuid[])",  # noqa: S608
        kenmerken,
    )
    return n


@pytest_asyncio.fixture(loop_scope="session")
async def own_db() -> AsyncIterator[str]:
    """A database of the test's own, migrations applied by the test."""
    name = f"dptest_hist_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(f"{PG_ADMIN}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_ADMIN}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def _migrate(conn: asyncpg.Connection, *, until: str | None = None) -> None:
    """Apply migrations (up to, not including, ``until``) the way db.migrate does."""
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for name, sql in db.migration_files():
        if until is not None and name.startswith(until):
            return
        await conn.execute(sql)
        await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", name)


async def test_new_kenmerk_is_uuidv7_of_its_month() -> None:
    k = new_kenmerk()
    assert k.version == 7 and k.variant == uuid.RFC_4122
    assert partitions.month_of_kenmerk(k) == Month.of(datetime.now(UTC))
    m = Month(2027, 3)
    lo, hi = partitions.month_bounds(m)
    inside, _ = _kenmerk_in(m, 31)
    assert lo <= _kenmerk_in(m, 1)[0] < hi and lo <= inside < hi
    assert partitions.month_bounds(m.plus(1))[0] == hi
    assert Month.parse("2026-12").plus(1) == Month(2027, 1)
    with pytest.raises(partitions.HistoryError):
        Month.parse("2026-13")


async def test_migration_converts_a_populated_database(own_db: str) -> None:
    conn = await db.connect(own_db)
    try:
        await _migrate(conn, until="012")
        now = datetime.now(UTC)
        # legacy rows: uuid4 kenmerken, set-based, spread over the whole uuid space
        await conn.execute(
            "INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin,"
            " berichtkenmerk, belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,"
            " tijdstempel_aangeleverd)"
            " SELECT gen_random_uuid(), 'Omzetbelasting', 'wus', $1, 'bk', $1, 'OIN', 'Bedrijf',"
            " now() FROM generate_series(1, 3000)",
            CALLER,
        )
        await conn.execute(
            "INSERT INTO statuses (kenmerk, code, tijdstempel, omschrijving)"
            " SELECT kenmerk, '100', now(), 'aangeleverd' FROM envelopes"
        )
        await conn.execute(
            "INSERT INTO documents SELECT kenmerk, 0, 'text/xml', 'b.xml', 4, 'x', '<a/>'"
            " FROM envelopes"
        )
        # an old kenmerk whose random prefix falls in a month not yet partitioned
        future = Month.of(now).plus(8)
        lo, _hi = partitions.month_bounds(future)
        stray = UUID(int=lo.int + (1 << 70) + (4 << 76) + (2 << 62))
        await _insert(conn, stray, at=now)
        known = await conn.fetchval("SELECT kenmerk FROM envelopes LIMIT 1")
        max_id = await conn.fetchval("SELECT max(id) FROM statuses")
        # getNieuweStatussen bookkeeping of another caller: kept, with its kenmerk
        await conn.execute(
            "INSERT INTO wus_statuses_returned (caller_oin, status_id)"
            " SELECT 'other', id FROM statuses WHERE kenmerk = $1",
            known,
        )

        await db.migrate(conn)

        assert await conn.fetchval("SELECT count(*) FROM envelopes") == 3001
        assert await conn.fetchval("SELECT count(*) FROM statuses") == 3002
        where = {
            r["p"]: r["n"]
            for r in await conn.fetch(
                "SELECT tableoid::regclass::text AS p, count(*) AS n FROM envelopes GROUP BY 1"
            )
        }
        assert where["envelopes_legacy_hi"] > 2500, where
        assert where.get("envelopes_default", 0) >= 1  # the stray one at least
        # old rows readable, statuses queryable, WUS status queries work
        assert [s.code for s in await history(conn, known)] == ["100"]
        assert (
            await conn.fetchval(
                "SELECT kenmerk FROM wus_statuses_returned WHERE caller_oin = 'other'"
            )
            == known
        )
        pool = await db.create_pool(own_db, min_size=1, max_size=2)
        try:
            regels = await wus_store.statussen(pool, known, None, None)
            assert [r.status.code for r in regels] == ["100"]
            nieuw = await wus_store.nieuwe_statussen_proces(pool, CALLER, known, None, None)
            assert [r.status.code for r in nieuw] == ["100"]
            assert await wus_store.nieuwe_statussen_proces(pool, CALLER, known, None, None) == []
        finally:
            await pool.close()
        # new kenmerken land in the month partition; the status id sequence continues
        k = new_kenmerk()
        await _insert(conn, k, at=now)
        assert (
            await conn.fetchval(
                "SELECT tableoid::regclass::text FROM envelopes WHERE kenmerk = $1", k
            )
            == f"envelopes_{Month.of(now).suffix}"
        )
        assert await conn.fetchval("SELECT min(id) FROM statuses WHERE kenmerk = $1", k) > max_id
        # creating the stray's month moves it (and its children) out of the default
        # every history table (pop3_mailbox too since migration 017)
        assert await partitions.create_month(conn, future) == len(
            await partitions.history_tables(conn)
        )
        assert "pop3_mailbox" in (await partitions.partitions(conn))[future.suffix]
        for table in ("envelopes", "statuses", "documents", "deliveries"):
            assert (
                await conn.fetchval(
                    f"SELECT tableoid::regclass::text FROM {table} WHERE kenmerk = $1",  # noqa: S608
                    stray,
                )
                == f"{table}_{future.suffix}"
            )
        assert [s.code for s in await history(conn, stray)] == ["100", "400"]
        # ON CONFLICT (kenmerk, …) clauses still work on the partitioned tables
        await conn.execute(
            "INSERT INTO documents VALUES ($1, 0, 'text/xml', 'b.xml', 3, 'y', '<b/>')"
            " ON CONFLICT (kenmerk, seq) DO NOTHING",
            k,
        )
    finally:
        await conn.close()


async def test_partitions_are_created_ahead_by_the_retention_component(env: Env) -> None:
    conn = await env.conn()
    current = Month.of(datetime.now(UTC))
    found = await partitions.partitions(conn)
    assert current.suffix in found and current.plus(3).suffix in found
    assert found["default"] == set(await partitions.history_tables(conn))
    assert current.plus(5).suffix not in found
    # storage parameters are set per partition (a partitioned parent has none): new
    # partitions take the default partition's
    await conn.execute("ALTER TABLE envelopes_default SET (fillfactor = 85)")
    env.settings.history.months_ahead = 5
    await env.start_gateway(components=("retention",), serve_http=False)

    tables = set(await partitions.history_tables(conn))

    async def made() -> bool:
        return (await partitions.partitions(conn)).get(current.plus(5).suffix) == tables

    await wait_for(made, what="partitions five months ahead")
    got = await partitions.partitions(conn)
    assert got[current.plus(4).suffix] == got[current.plus(5).suffix] == got["default"]
    assert await conn.fetchval(
        "SELECT reloptions FROM pg_class WHERE relname = $1", f"envelopes_{current.plus(5).suffix}"
    ) == ["fillfactor=85"]
    # idempotent
    assert await partitions.ensure_ahead(conn, ahead=5) == []


async def test_purge_of_an_expired_month_while_intake_continues(env: Env) -> None:
    conn = await env.conn()
    store = FilePayloadStore(env.settings.resolve(env.settings.storage.payload_dir))
    current = Month.of(datetime.now(UTC))
    old, other = current.plus(1), current.plus(2)  # treated as past below (``now``)
    only_old = await store.put(b"payload used only by the purged month")
    shared = await store.put(b"payload used by both months")
    purged_k, kept_k = [], []
    for i in range(20):
        k, at = _kenmerk_in(old, 1 + i % 27)
        await _insert(conn, k, at=at, sha256=only_old.sha256 if i == 0 else shared.sha256)
        purged_k.append(k)
        k2, at2 = _kenmerk_in(other, 1 + i % 27)
        await _insert(conn, k2, at=at2, sha256=shared.sha256 if i == 0 else None)
        kept_k.append(k2)

    gw = await env.start_gateway(components=("intake", "sweeper"), serve_http=False)
    assert gw.intake is not None
    intake = gw.intake
    accepted: list[UUID] = []
    stop = asyncio.Event()

    async def submit_loop() -> None:
        while not stop.is_set():
            accepted.append((await intake.aanleveren(aanlevering())).kenmerk)

    submitter = asyncio.create_task(submit_loop())
    await wait_for(lambda: asyncio.sleep(0, len(accepted) >= 3), what="intake running")
    later = old.end + timedelta(days=400)
    expired = await partitions.expired(conn, RetentionPolicy(), now=later)
    assert str(old) in {s.name for s in expired}
    assert str(other) not in {s.name for s in expired}
    purge_conn = await db.connect(env.db_url)
    try:
        result = await partitions.purge_month(
            purge_conn, str(old), store, now=later, grace_seconds=0
        )
    finally:
        await purge_conn.close()
    n_during = len(accepted)
    await wait_for(lambda: asyncio.sleep(0, len(accepted) >= n_during + 3), what="more intake")
    stop.set()
    await submitter

    assert (result.envelopes, result.statuses, result.payloads) == (20, 40, 1)
    for table in ("envelopes", "documents", "statuses", "deliveries", "wus_statuses_returned"):
        assert await _count(conn, table, purged_k) == 0, table
        assert await _count(conn, table, kept_k) == 20 or "statuses" in table, table
    assert await _count(conn, "statuses", kept_k) == 40
    assert old.suffix not in await partitions.partitions(conn)
    assert await store.size(only_old.sha256) is None  # its payload is gone
    assert await store.size(shared.sha256) is not None  # still used by the other month
    # everything intake accepted, before, during and after the purge, is stored
    assert await _count(conn, "envelopes", accepted) == len(accepted)
    row = await conn.fetchrow("SELECT month, envelopes, actor FROM history_purges")
    assert tuple(row) == (str(old), 20, "retention")
    # the month cannot be purged twice, nor the current month
    with pytest.raises(partitions.HistoryError):
        await partitions.purge_month(conn, str(old), store, now=later)
    with pytest.raises(partitions.HistoryError):
        await partitions.purge_month(conn, str(current), store)


async def test_retention_per_berichtsoort(env: Env) -> None:
    conn = await env.conn()
    current = Month.of(datetime.now(UTC))
    short, long_, pending = current.plus(1), current.plus(2), current.plus(3)
    for _ in range(3):
        k, at = _kenmerk_in(short)
        await _insert(conn, k, at=at, berichtsoort="Kortlopend")
        k, at = _kenmerk_in(long_)
        await _insert(conn, k, at=at, berichtsoort="Kortlopend")
        k, at = _kenmerk_in(long_)
        await _insert(conn, k, at=at, berichtsoort="Jaarrekening")
        k, at = _kenmerk_in(pending)
        await _insert(conn, k, at=at, berichtsoort="Kortlopend", state="pending")
    policy = RetentionPolicy(default=13, per_berichtsoort={"Kortlopend": 1, "Jaarrekening": 84})
    now = current.plus(8).start
    names = {s.name for s in await partitions.expired(conn, policy, now=now)}
    # Kortlopend-only month: 1 month after its last status; a month holding a Jaarrekening
    # is kept for 84; a month with a pending delivery is never purged
    assert str(short) in names
    assert str(long_) not in names and str(pending) not in names
    states = {s.name: s for s in [await partitions.month_state(conn, long_.suffix)]}
    assert states[str(long_)].expires_at(policy) > long_.start + timedelta(days=84 * 30)


async def test_retention_component_exports_then_purges(env: Env, tmp_path: Path) -> None:
    """maintain_history with an export dir: the expired month is exported, then purged."""
    conn = await env.conn()
    current = Month.of(datetime.now(UTC))
    month = current.plus(1)
    ks = []
    for _ in range(4):
        k, at = _kenmerk_in(month)
        await _insert(conn, k, at=at, berichtsoort="Kortlopend")
        ks.append(k)
    store = FilePayloadStore(env.settings.resolve(env.settings.storage.payload_dir))
    pool = await db.create_pool(env.db_url, min_size=1, max_size=2)
    config = HistoryConfig(retention_months_per_berichtsoort={"Kortlopend": 1}, export_dir=tmp_path)
    try:
        exported = await partitions.export_month(conn, str(month), tmp_path / "manual")
        manifest = json.loads((exported / "manifest.json").read_text())
        assert manifest["tables"]["envelopes"]["rows"] == 4
        assert manifest["tables"]["statuses"]["rows"] == 8
        with gzip.open(exported / "envelopes.csv.gz", "rt") as fh:
            rows = list(csv.DictReader(io.StringIO(fh.read())))
        assert {UUID(r["kenmerk"]) for r in rows} == set(ks)
        # nothing is expired at the real now: the component purges nothing
        assert await retention.maintain_history(pool, store, config) == []
        assert await _count(conn, "envelopes", ks) == 4
    finally:
        await pool.close()


async def test_cli_exports_and_purges_a_past_month(own_db: str, tmp_path: Path) -> None:
    """A database partitioned from three months back (digipoort.partitions_from): the CLI
    lists the months, refuses a month within retention without --yes, exports and purges."""
    current = Month.of(datetime.now(UTC))
    past = current.plus(-2)
    conn = await db.connect(own_db)
    try:
        await conn.execute(f"SET digipoort.partitions_from = '{current.plus(-3)}-01'")
        await db.migrate(conn)
        ks = []
        for _ in range(5):
            k, at = _kenmerk_in(past)
            await _insert(conn, k, at=at)
            ks.append(k)
        k_now = new_kenmerk()
        await _insert(conn, k_now, at=datetime.now(UTC))
    finally:
        await conn.close()
    cli_env = {
        "DIGIPOORT_DATABASE__URL": own_db,
        "DIGIPOORT_CONFIG": "",
        "DIGIPOORT_STORAGE__PAYLOAD_DIR": str(tmp_path / "payloads"),
    }
    listed = await cli("history", "list", "--json", env=cli_env)
    assert listed.exit_code == 0, listed.output
    months = {r["month"]: r for r in json.loads(listed.stdout)}
    assert months[str(past)]["envelopes"] == 5
    refused = await cli("history", "purge", str(past), env=cli_env)
    assert refused.exit_code == 1 and "--yes" in refused.stderr
    not_a_month = await cli("history", "purge", "1999-13", env=cli_env)
    assert not_a_month.exit_code == 1 and "not a month" in not_a_month.stderr
    assert "Traceback" not in not_a_month.stderr
    done = await cli(
        "history", "purge", str(past), "--yes", "--export-dir", str(tmp_path), "--json", env=cli_env
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)[0]["envelopes"] == 5
    manifest = json.loads((tmp_path / str(past) / "manifest.json").read_text())
    assert manifest["tables"]["envelopes"]["rows"] == 5
    conn = await db.connect(own_db)
    try:
        assert await _count(conn, "envelopes", ks) == 0
        assert await _count(conn, "envelopes", [k_now]) == 1
        assert await conn.fetchval("SELECT export_path FROM history_purges") == str(
            tmp_path / str(past)
        )
    finally:
        await conn.close()


async def test_mailbox_rows_go_with_their_month(own_db: str, tmp_path: Path) -> None:
    """Migration 017 partitions a populated pop3_mailbox (rows without a kenmerk get their
    status's, or their creation month's); exporting and purging a month take its mailbox
    rows with it, and the owner's POP3 listing still shows the rest."""
    current = Month.of(datetime.now(UTC))
    past = current.plus(-2)
    conn = await db.connect(own_db)
    try:
        await conn.execute(f"SET digipoort.partitions_from = '{current.plus(-3)}-01'")
        await _migrate(conn, until="017")
        k_past, at_past = _kenmerk_in(past)
        await _insert(conn, k_past, at=at_past)
        k_now = new_kenmerk()
        await _insert(conn, k_now, at=datetime.now(UTC))
        past_status = await conn.fetchval("SELECT min(id) FROM statuses WHERE kenmerk = $1", k_past)
        now_status = await conn.fetchval("SELECT min(id) FROM statuses WHERE kenmerk = $1", k_now)
        rows = [  # (uid, status_id, kenmerk, created_at)
            ("past-with-kenmerk", past_status, k_past, at_past),
            ("past-from-status", past_status + 1, None, at_past),
            ("past-from-created", None, None, at_past),
            ("now", now_status, k_now, datetime.now(UTC)),
            ("now-no-kenmerk", None, None, datetime.now(UTC)),
        ]
        for uid, status_id, kenmerk, created in rows:
            await conn.execute(
                "INSERT INTO pop3_mailbox (owner_oin, uid, status_id, kenmerk, message,"
                " created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                CALLER,
                uid,
                status_id,
                kenmerk,
                f"Subject: {uid}\r\n\r\nbody\r\n".encode(),
                created,
            )
        before = await smtp_store.list_mailbox(conn, CALLER)
        assert [e.uid for e in before] == [r[0] for r in rows]

        await db.migrate(conn)

        assert await smtp_store.list_mailbox(conn, CALLER) == before  # ids, uids, sizes kept
        where = {
            r["uid"]: (r["p"], r["kenmerk"])
            for r in await conn.fetch(
                "SELECT uid, kenmerk, tableoid::regclass::text AS p FROM pop3_mailbox"
            )
        }
        assert where["past-with-kenmerk"] == (f"pop3_mailbox_{past.suffix}", k_past)
        assert where["past-from-status"] == (f"pop3_mailbox_{past.suffix}", k_past)
        assert where["past-from-created"][0] == f"pop3_mailbox_{past.suffix}"
        assert where["now"] == (f"pop3_mailbox_{current.suffix}", k_now)
        assert where["now-no-kenmerk"][0] == f"pop3_mailbox_{current.suffix}"
        found = await partitions.partitions(conn)
        assert "pop3_mailbox" in found[past.suffix] and "pop3_mailbox" in found["default"]
        # kenmerk is required now; one mail per status still (ON CONFLICT of smtpreturns)
        with pytest.raises(asyncpg.NotNullViolationError):
            await conn.execute(
                "INSERT INTO pop3_mailbox (owner_oin, uid, message) VALUES ($1, 'x', 'm')",
                CALLER,
            )
        assert (
            await conn.execute(
                "INSERT INTO pop3_mailbox (owner_oin, uid, status_id, kenmerk, message)"
                " VALUES ($1, 'dup', $2, $3, 'm') ON CONFLICT (kenmerk, status_id) DO NOTHING",
                CALLER,
                now_status,
                k_now,
            )
            == "INSERT 0 0"
        )
        # the owner's listing uses the (owner_oin, id) index of each partition
        await conn.execute("SET enable_seqscan = off")
        plan = "\n".join(
            r[0]
            for r in await conn.fetch(
                "EXPLAIN SELECT id, uid FROM pop3_mailbox WHERE owner_oin = $1 ORDER BY id",
                CALLER,
            )
        )
        await conn.execute("RESET enable_seqscan")
        assert "pop3_mailbox_p" in plan and "Seq Scan" not in plan, plan

        exported = await partitions.export_month(conn, str(past), tmp_path)
        manifest = json.loads((exported / "manifest.json").read_text())
        assert manifest["tables"]["pop3_mailbox"]["rows"] == 3
        store = FilePayloadStore(tmp_path / "payloads")
        result = await partitions.purge_month(conn, str(past), store, grace_seconds=0)
        assert result.envelopes == 1

        left = await smtp_store.list_mailbox(conn, CALLER)
        assert [e.uid for e in left] == ["now", "now-no-kenmerk"]
        assert [e.id for e in left] == [e.id for e in before[3:]]
        assert await smtp_store.fetch_message(conn, CALLER, left[0].id) == (
            b"Subject: now\r\n\r\nbody\r\n"
        )
        assert await smtp_store.fetch_message(conn, CALLER, before[0].id) is None
        assert f"pop3_mailbox_{past.suffix}" not in {
            r[0] for r in await conn.fetch("SELECT relname FROM pg_class")
        }
        assert await smtp_store.delete_messages(conn, CALLER, [left[1].id]) == 1
        assert [e.uid for e in await smtp_store.list_mailbox(conn, CALLER)] == ["now"]
    finally:
        await conn.close()


async def test_a_purge_waiting_for_a_lock_does_not_hold_up_intake(env: Env) -> None:
    """A long reader holds the month's tables; the purge's DETACH waits for it with a short
    lock_timeout and retries, so inserts (intake) are not queued behind it meanwhile."""
    conn = await env.conn()
    store = FilePayloadStore(env.settings.resolve(env.settings.storage.payload_dir))
    current = Month.of(datetime.now(UTC))
    month = current.plus(1)
    k, at = _kenmerk_in(month)
    await _insert(conn, k, at=at)
    reader = await db.connect(env.db_url)
    purger = await db.connect(env.db_url)
    try:
        tx = reader.transaction()
        await tx.start()
        await reader.fetchval("SELECT count(*) FROM statuses")  # holds every partition
        purge = asyncio.create_task(
            partitions.purge_month(
                purger, str(month), store, now=month.end + timedelta(days=500), lock_timeout_ms=50
            )
        )
        # intake goes on while the purge keeps retrying its DETACH
        for _ in range(5):
            n, n_at = _kenmerk_in(current, 2)
            await asyncio.wait_for(_insert(conn, n, at=n_at), timeout=10)
            assert not purge.done()
        await tx.rollback()
        result = await asyncio.wait_for(purge, timeout=60)
        assert result.envelopes == 1
        assert await _count(conn, "envelopes", [k]) == 0
    finally:
        await reader.close()
        await purger.close()
