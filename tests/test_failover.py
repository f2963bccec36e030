"""PostgreSQL failover (docs/operations.md, "PostgreSQL failover"): a multi-host database
URL with ``target_session_attrs=read-write``, a primary with a synchronous standby of the
test's own (tests/servers.py), the primary SIGKILLed under load and the standby promoted:
the gateway goes on on the new primary without a restart and nothing a sender was told
is lost."""

from __future__ import annotations

from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest

from digipoort import db, prerequisites
from digipoort.outages import describe_outage, is_outage
from tests.servers import pg_pair, rabbit_node, servers_available
from tests.support import CBS, HBAG, Env, create_env, create_template, wait_for
from tests.test_cluster import HANG, Load, _ready


def test_a_multi_host_url_asks_for_a_writable_host() -> None:
    one = "postgresql://u@db1:5432/x"
    two = "postgresql://u@db1:5432,db2:5432/x"
    assert not db.multi_host(one) and db.multi_host(two)
    assert db._session_attrs(one) == {}
    assert db._session_attrs(two) == {"target_session_attrs": "read-write"}
    assert db._session_attrs(two + "?target_session_attrs=primary") == {}


def test_no_writable_host_is_an_outage_and_a_clear_prerequisite() -> None:
    exc = asyncpg.exceptions.TargetServerAttributeNotMatched("none")
    assert is_outage(exc) and describe_outage(exc) == "database"
    error = prerequisites.translate(exc, "postgresql://u:secret@db1:5432,db2:5433/x")
    assert error is not None and error.code == "database-read-only"
    assert "db1:5432,db2:5433" in str(error) and "secret" not in str(error)


async def _count(url: str, sql: str, *args: object) -> int:
    """A count on whichever host takes writes now; -1 while none does."""
    try:
        conn = await db.connect(url)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        if not is_outage(exc) and not isinstance(exc, TimeoutError):
            raise
        return -1
    except asyncpg.exceptions.TargetServerAttributeNotMatched:
        return -1
    try:
        return int(await conn.fetchval(sql, *args))
    finally:
        await conn.close()


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not servers_available(), reason="needs rabbitmq-server and initdb/pg_ctl")
async def test_gateway_continues_on_the_promoted_standby(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path
) -> None:
    """Load on a gateway whose database URL names a primary and its synchronous standby;
    SIGKILL the primary, promote the standby: submissions meanwhile get a clean fault or
    a kenmerk (never a hang); the gateway continues on the new primary without restart;
    every kenmerk a sender received is in the new primary and delivered exactly once per
    recipient."""
    async with pg_pair() as pair, rabbit_node() as node:
        template = f"dptest_tpl_{uuid4().hex[:10]}"
        await create_template(template, pg_admin=pair.primary.admin_url)
        env: Env = await create_env(
            tmp_path_factory.mktemp("env"),
            pki_dir,
            template,
            pg_admin=pair.primary.admin_url,
            amqp=node.amqp_url,
            mgmt=node.management_url,
        )
        env.db_url = pair.url(env.name)
        env.settings.database.url = env.db_url
        four_hundreds = "SELECT count(*) FROM statuses WHERE code = '400'"
        try:
            gw = await env.start_gateway(components=("intake", "sweeper", "validator", "router"))
            port = env.settings.http.port
            load = Load(gw)
            load.start()

            async def delivered(at: int) -> None:
                async def reached() -> bool:
                    return await _count(env.db_url, four_hundreds) >= at

                await wait_for(reached, timeout=240, what=f"{at} deliveries")

            await delivered(60)

            await pair.primary.kill()
            before = len(load.accepted) + len(load.faults)

            async def some_answered() -> bool:  # while there is no primary at all
                return len(load.accepted) + len(load.faults) >= before + 10

            await wait_for(some_answered, timeout=120, what="answers without a primary")
            await pair.standby.promote()

            # the same processes go on, on the new primary
            await delivered(await _count(env.db_url, four_hundreds) + 60)
            assert await wait_for(lambda: _ready(port), timeout=120, what="/readyz")
            await load.finish()
            assert load.slowest < HANG
            assert load.faults, "submissions without a primary got a clean fault"

            expected = {a.kenmerk for a in load.accepted}
            assert len(expected) == len(load.accepted) > 30

            mine_400 = (
                "SELECT count(*) FROM statuses WHERE code = '400' AND kenmerk = ANY($1::uuid[])"
            )

            async def all_delivered() -> bool:
                return await _count(env.db_url, mine_400, list(expected)) >= 2 * len(expected)

            await wait_for(all_delivered, timeout=400, what="every accepted envelope delivered")
            conn = await db.connect(env.db_url)
            try:
                assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
                assert f":{pair.standby.port}/" in env.db_url  # the promoted one answered
                stored = {
                    r["kenmerk"]
                    for r in await conn.fetch(
                        "SELECT kenmerk FROM envelopes WHERE kenmerk = ANY($1::uuid[])",
                        list(expected),
                    )
                }
                assert stored == expected, "every kenmerk a sender received survived"
                for oin in (CBS, HBAG):
                    rows = await conn.fetch(
                        "SELECT kenmerk, count(*) AS n FROM statuses"
                        " WHERE code = '400' AND recipient_oin = $1 GROUP BY kenmerk",
                        oin,
                    )
                    mine = {r["kenmerk"]: r["n"] for r in rows if r["kenmerk"] in expected}
                    assert set(mine) == expected
                    assert all(n == 1 for n in mine.values()), "one 400 per recipient"
            finally:
                await conn.close()
            print(
                f"\nfailover: {len(expected)} accepted, {len(load.faults)} clean faults, "
                f"slowest answer {load.slowest:.1f}s"
            )
        finally:
            await env.stop()
