"""No hot query's plan depends on luck (issue 15 item 7).

A seeded database (20,000 envelopes with documents and three statuses each, analyzed as
``setup`` / ``db migrate`` do); each hot query is prepared and planned as a *generic* plan
(what asyncpg's statement cache ends up executing) and must reach envelopes, documents and
statuses through an index, never by scanning the table. Also: ``db.analyze`` leaves the
statistics fresh, and the opsmetrics collector reports them."""

from __future__ import annotations

import json
import math
from typing import Any

import asyncpg
import pytest

from digipoort import db, envelopestore, opsmetrics
from tests.support import Env

ENVELOPES = 20_000
SCANNED_BY_INDEX_ONLY = {"envelopes", "documents", "statuses", "resubmission_keys"}

_SEED = """
INSERT INTO envelopes (kenmerk, berichtsoort, koppelvlak, sender_oin, aanleverkenmerk,
    berichtkenmerk, belanghebbende_nummer, belanghebbende_type, rol_belanghebbende,
    tijdstempel_aangeleverd, stage, handed_off)
SELECT md5(i::text)::uuid, 'Omzetbelasting', 'wus', '00000099100000010000', 'a' || i,
    'b' || i, '123456789', 'Fi', 'Bedrijf', now() - make_interval(secs => i),
    CASE WHEN i % 100 = 0 THEN 'aangeboden' ELSE 'afgeleverd' END, i % 100 <> 0
FROM generate_series(1, 20000) AS i;
INSERT INTO documents (kenmerk, seq, mime_type, bestandsnaam, size, sha256, data)
SELECT kenmerk, 0, 'text/xml', 'x.xml', 3, 'abc', '\\x00'::bytea FROM envelopes;
INSERT INTO statuses (kenmerk, code, tijdstempel, omschrijving)
SELECT kenmerk, c, tijdstempel_aangeleverd, 'x' FROM envelopes, unnest('{105,100,110}'::text[]) c;
INSERT INTO resubmission_keys (sleutel, kenmerk, tijdstempel)
SELECT decode(md5(kenmerk::text), 'hex'), kenmerk, tijdstempel_aangeleverd FROM envelopes;
"""

# name -> (statement, argument types for PREPARE)
HOT_QUERIES: dict[str, tuple[str, str]] = {
    "fetch envelopes": ("SELECT * FROM envelopes WHERE kenmerk = ANY($1::uuid[])", "uuid[]"),
    "fetch documents": (
        "SELECT kenmerk, seq, mime_type, bestandsnaam, size, sha256, data FROM documents"
        " WHERE kenmerk = ANY($1::uuid[]) ORDER BY kenmerk, seq",
        "uuid[]",
    ),
    "status history": (
        "SELECT kenmerk, recipient_oin, code, tijdstempel, omschrijving, foutcode,"
        " foutbeschrijving, details FROM statuses WHERE kenmerk = $1 ORDER BY id",
        "uuid",
    ),
    "mark handed off": (
        "UPDATE envelopes SET handed_off = true WHERE kenmerk = ANY($1::uuid[])",
        "uuid[]",
    ),
    "set stage": (
        "UPDATE envelopes e SET stage = s.stage, updated_at = now()"
        " FROM unnest($1::uuid[], $2::text[]) AS s(kenmerk, stage)"
        " WHERE e.kenmerk = s.kenmerk",
        "uuid[], text[]",
    ),
    "sweeper": (
        "SELECT kenmerk FROM envelopes WHERE NOT handed_off AND stage = 'aangeboden'"
        " AND tijdstempel_aangeleverd < now() - make_interval(secs => $1)"
        " ORDER BY tijdstempel_aangeleverd LIMIT $2 FOR UPDATE SKIP LOCKED",
        "float8, int",
    ),
    "resubmission originals": (
        "SELECT sleutel, kenmerk, tijdstempel FROM resubmission_keys"
        " WHERE sleutel = ANY($1::bytea[])",
        "bytea[]",
    ),
}


_ROOTS = """
WITH RECURSIVE tree AS (
    SELECT c.oid AS relid, c.relname AS root FROM pg_class c
     WHERE c.relnamespace = current_schema()::regnamespace AND NOT c.relispartition
    UNION ALL
    SELECT i.inhrelid, t.root FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid
)
SELECT c.relname, t.root, c.reltuples FROM tree t JOIN pg_class c ON c.oid = t.relid
"""


#: a partition this small (by the statistics) is rightly read whole: the legacy and
#: DEFAULT partitions and the months created ahead hold (next to) nothing here
SMALL_PARTITION_ROWS = 1000


def _scans(plan: dict[str, Any], roots: dict[str, tuple[str, float]]) -> list[tuple[str, str]]:
    """(node type, table) of every node of ``plan`` that reads a relation; a partition
    (migration 012) is named by its partitioned table, a near-empty one is left out."""
    found = []
    if "Relation Name" in plan:
        relation = str(plan["Relation Name"])
        root, rows = roots.get(relation, (relation, math.inf))
        if root == relation or rows >= SMALL_PARTITION_ROWS:
            found.append((str(plan["Node Type"]), root))
    for child in plan.get("Plans", []):
        found.extend(_scans(child, roots))
    return found


async def _roots(conn: asyncpg.Connection) -> dict[str, tuple[str, float]]:
    return {
        str(r["relname"]): (str(r["root"]), float(r["reltuples"]))
        for r in await conn.fetch(_ROOTS)
    }


async def _generic_plan(conn: asyncpg.Connection, sql: str, types: str) -> dict[str, Any]:
    """The generic plan of ``sql`` executed with a seeded kenmerk for each uuid parameter
    (NULL for the others): a NULL kenmerk would let partition pruning remove every scan."""
    kenmerk = await conn.fetchval("SELECT kenmerk FROM envelopes ORDER BY kenmerk DESC LIMIT 1")
    values = {"uuid": f"'{kenmerk}'::uuid", "uuid[]": f"ARRAY['{kenmerk}']::uuid[]"}
    await conn.execute("DEALLOCATE ALL")
    await conn.execute(f"PREPARE hot ({types}) AS {sql}")
    args = ", ".join(values.get(t.strip(), "NULL") for t in types.split(","))
    raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE hot ({args})")
    parsed = json.loads(raw) if isinstance(raw, str) else raw
    plan: dict[str, Any] = parsed[0]["Plan"]
    return plan


@pytest.fixture
async def seeded(env: Env) -> asyncpg.Connection:
    conn = await env.conn()
    await conn.execute(_SEED)
    # the seed's row counts reach pg_stat when the backend next reports (at most once a
    # second): force that before ANALYZE, or they arrive after it as "modified since"
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await db.analyze(conn)
    return conn


@pytest.mark.parametrize("name", sorted(HOT_QUERIES))
async def test_hot_query_uses_an_index(seeded: asyncpg.Connection, name: str) -> None:
    sql, types = HOT_QUERIES[name]
    await seeded.execute("SET plan_cache_mode = force_generic_plan")
    try:
        plan = await _generic_plan(seeded, sql, types)
    finally:
        await seeded.execute("RESET plan_cache_mode")
    scans = _scans(plan, await _roots(seeded))
    assert scans, plan
    for node, relation in scans:
        if relation in SCANNED_BY_INDEX_ONLY:
            assert node != "Seq Scan", f"{name}: {node} on {relation}\n{json.dumps(plan)}"


async def test_intake_statement_touches_no_table_by_scanning(seeded: asyncpg.Connection) -> None:
    """The group-commit statement: every read of envelopes / resubmission_keys (the
    resubmission lookup, the handed_off marks) goes through an index."""
    types = (
        "uuid[], text[], text[], text[], text[], text[], text[], text[], text[], text[],"
        " text[], text[], text[], text[], timestamptz[], bytea[], text[], uuid[], smallint[],"
        " text[], text[], bigint[], text[], bytea[], float8, text[], text[], uuid[]"
    )
    await seeded.execute("SET plan_cache_mode = force_generic_plan")
    try:
        plan = await _generic_plan(seeded, envelopestore._ACCEPT, types)
    finally:
        await seeded.execute("RESET plan_cache_mode")
    roots = await _roots(seeded)
    for node, relation in _scans(plan, roots):
        if relation in SCANNED_BY_INDEX_ONLY:
            assert node != "Seq Scan", f"{node} on {relation}\n{json.dumps(plan)}"
    # sanity: it really plans the resubmission lookup and the marks
    relations = {relation for _node, relation in _scans(plan, roots)}
    assert {"envelopes", "resubmission_keys"} <= relations


async def test_analyze_leaves_fresh_statistics_that_opsmetrics_reports(
    seeded: asyncpg.Connection,
) -> None:
    stats = await opsmetrics.collect_table_stats(seeded)
    assert set(stats) == set(db.HOT_TABLES)
    assert stats["envelopes"].age < 600
    assert stats["envelopes"].modified_ratio == 0.0
    await seeded.execute("DELETE FROM statuses WHERE code = '100'")
    await seeded.execute("SELECT pg_stat_force_next_flush()")
    stats = await opsmetrics.collect_table_stats(seeded)
    assert stats["statuses"].dead_ratio == pytest.approx(1 / 3, abs=0.05)
    assert stats["statuses"].modified_ratio > 0.4
    opsmetrics.update_table_gauges(stats)
    assert not math.isinf(stats["statuses"].age)
