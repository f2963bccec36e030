"""A RabbitMQ cluster (docs/operations.md, "RabbitMQ cluster"): the node list in the
config, connecting to any node, moving on when a node dies, quorum queue membership.

The fault test starts a 3-node cluster of its own (tests/servers.py) — never the
machine's broker — and kills its nodes with SIGKILL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import pytest
from aio_pika.robust_connection import RobustConnection

from digipoort import brokerconn, provision
from digipoort.app import Gateway
from digipoort.broker import Broker, aflever_queue
from digipoort.config import BrokerConfig, load_settings
from digipoort.envelope import Accepted
from digipoort.intake import IntakeUnavailable
from tests.servers import RabbitCluster, pg_cluster, rabbit_cluster, servers_available
from tests.support import (
    AMQP,
    CBS,
    HBAG,
    MGMT,
    Env,
    aanlevering,
    create_env,
    create_template,
    wait_for,
)

# -- configuration and connection (the machine's broker, own vhosts) ------------------------


def test_one_url_is_a_list_of_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIGIPOORT_BROKER__URLS", raising=False)
    monkeypatch.setenv("DIGIPOORT_BROKER__URL", "amqp://u:p@one:5672/v")
    b = load_settings().broker
    assert b.nodes == ["amqp://u:p@one:5672/v"] and b.quorum_group_size is None
    assert b.management_nodes == [b.management_url]


@pytest.mark.parametrize(
    "value",
    [
        "amqp://u:p@a:1/v,amqp://u:p@b:2/v, amqp://u:p@c:3/v",
        '["amqp://u:p@a:1/v", "amqp://u:p@b:2/v", "amqp://u:p@c:3/v"]',
    ],
)
def test_urls_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("DIGIPOORT_BROKER__URLS", value)
    b = load_settings().broker
    assert b.nodes == ["amqp://u:p@a:1/v", "amqp://u:p@b:2/v", "amqp://u:p@c:3/v"]
    assert b.url == "amqp://u:p@a:1/v"  # the first node, for code that reads one URL
    assert b.quorum_group_size == 3  # the default on three or more nodes


def test_quorum_group_size_as_configured() -> None:
    assert BrokerConfig(urls=["a", "b"]).quorum_group_size is None
    assert BrokerConfig(urls=["a", "b"], quorum_initial_group_size=2).quorum_group_size == 2
    assert BrokerConfig(urls=["a", "b", "c", "d", "e"]).quorum_group_size == 3
    with pytest.raises(ValueError):
        BrokerConfig(quorum_initial_group_size=0)


def test_the_attempt_hook_exists_in_aio_pika() -> None:
    """ClusterConnection replaces one private step of aio-pika's RobustConnection; an
    aio-pika without it must fail here, not silently connect to one node only."""
    assert callable(getattr(RobustConnection, brokerconn._ATTEMPT))


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = f"dptest_cluster_{uuid4().hex[:10]}"
    management = provision.Management(MGMT)
    await management.ensure_vhost(name)
    try:
        yield name
    finally:
        await management.delete_vhost(name)


def _dead_url(vhost: str) -> str:
    from tests.support import free_port

    return f"amqp://guest:guest@127.0.0.1:{free_port()}/{vhost}"


async def test_connects_to_the_first_node_that_answers(vhost: str) -> None:
    """Two nodes that refuse connections come first: the broker connects to the third,
    declares its topology there and publishes with confirms."""
    urls = [_dead_url(vhost), _dead_url(vhost), f"{AMQP}/{vhost}"]
    broker = Broker(urls, connect_timeout=5)
    await broker.connect()
    try:
        assert broker.connected and broker.node is not None
        assert broker.node.endswith(f"/{vhost}") and AMQP.rsplit(":", 1)[1] in broker.node
        await broker.publish_work("validate", uuid4())
    finally:
        await broker.close()


async def test_no_node_answers_is_a_clean_error(vhost: str) -> None:
    broker = Broker([_dead_url(vhost), _dead_url(vhost)], connect_timeout=5)
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        await broker.connect()
    assert time.monotonic() - started < 30


async def test_connect_first_and_management_fall_through_to_a_live_node(vhost: str) -> None:
    conn = await brokerconn.connect_first([_dead_url(vhost), f"{AMQP}/{vhost}"])
    await conn.close()
    from tests.support import free_port

    management = provision.Management([f"http://guest:guest@127.0.0.1:{free_port()}", MGMT])
    queue_list = await management.request("GET", f"/queues/{vhost}")
    assert isinstance(queue_list, list)


async def test_prerequisites_accept_one_live_node(vhost: str) -> None:
    from digipoort import prerequisites

    await prerequisites.check_broker([_dead_url(vhost), f"{AMQP}/{vhost}"])
    with pytest.raises(prerequisites.PrerequisiteError) as err:
        await prerequisites.check_broker([_dead_url(vhost), _dead_url(vhost)])
    assert err.value.code == "broker-unreachable" and "broker.urls" in str(err.value)


async def test_existing_queue_with_another_group_size_is_used_as_it_is(vhost: str) -> None:
    """A queue declared before the cluster grew (no group size): a gateway that now
    declares size 3 uses it instead of failing on PRECONDITION_FAILED."""
    url = f"{AMQP}/{vhost}"
    old = Broker(url)
    await old.connect()
    await old.close()
    new = Broker([url], quorum_group_size=3)
    await new.connect()  # declares the whole topology again, now with the group size
    try:
        assert new.topology_declared
        await new.publish_work("validate", uuid4())
    finally:
        await new.close()


async def test_a_nacked_publisher_channel_is_renewed(vhost: str) -> None:
    """A nack replaces the publisher channel (at most every RENEW_PUBLISHER_SECONDS);
    publishing goes on on the new channel once the broker takes messages again."""
    from aiormq.exceptions import DeliveryError

    management = provision.Management(MGMT)
    broker = Broker(f"{AMQP}/{vhost}")
    await broker.connect()
    try:
        await management.request(
            "PUT",
            f"/policies/{vhost}/refuse",
            {
                "pattern": r"^digipoort\.validate$",
                "apply-to": "queues",
                "definition": {"max-length": 1, "overflow": "reject-publish"},
            },
        )

        async def refused() -> bool:
            try:
                await broker.publish_work("validate", uuid4())
            except DeliveryError:
                return True
            return False

        old = broker._channel
        await wait_for(refused, timeout=30, what="a nack")

        async def renewed() -> bool:
            return broker._channel is not old and broker._renewing is None

        await wait_for(renewed, timeout=30, what="a new publisher channel")
        assert old is not None and old.is_closed
        await management.request("DELETE", f"/policies/{vhost}/refuse")

        async def taken() -> bool:
            return not await refused()

        await wait_for(taken, timeout=30, what="publishes confirmed again")
        assert broker.publishing
    finally:
        await broker.close()


# -- the fault test: a 3-node cluster of our own --------------------------------------------

HANG = 30.0  # a submission that takes longer than this is a hang


def _members(queue: dict[str, Any]) -> int:
    members = queue.get("members")
    return len(members) if isinstance(members, list) else 0


async def _count_400(env: Env) -> int:
    conn = await env.conn()
    return int(await conn.fetchval("SELECT count(*) FROM statuses WHERE code = '400'"))


async def _ready(port: int) -> bool:
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=5)
            ) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def _queue_ids(urls: list[str], oin: str, expect: int, timeout: float) -> Counter[UUID]:
    """Take (and ack) every message of a recipient queue, through any live node."""
    conn = await brokerconn.connect_first(urls)
    ids: Counter[UUID] = Counter()
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(aflever_queue(oin), passive=True)
        deadline = time.monotonic() + timeout
        quiet_until = 0.0
        while time.monotonic() < deadline:
            msg = await q.get(fail=False, no_ack=True)
            if msg is not None:
                ids[UUID(msg.message_id or "")] += 1
                continue
            if sum(ids.values()) >= expect:
                if quiet_until == 0.0:
                    quiet_until = time.monotonic() + 1.0  # catch extra copies
                elif time.monotonic() > quiet_until:
                    break
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    return ids


class Load:
    """Senders submitting CBS-Detailhandel envelopes (two recipients) in waves of five;
    every submission is bounded by HANG (a longer one fails the test as a hang)."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.accepted: list[Accepted] = []
        self.faults: list[str] = []
        self.slowest = 0.0
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def one(self) -> None:
        assert self.gw.intake is not None
        started = time.monotonic()
        try:
            async with asyncio.timeout(HANG):
                accepted = await self.gw.intake.aanleveren(
                    aanlevering("CBS-Detailhandel", sample="cbs-detailhandel.xml")
                )
        except IntakeUnavailable as exc:
            self.faults.append(str(exc))
        else:
            self.accepted.append(accepted)
        finally:
            self.slowest = max(self.slowest, time.monotonic() - started)

    async def run(self) -> None:
        while not self.stop.is_set():
            await asyncio.gather(*(self.one() for _ in range(5)))
            try:  # pacing between waves, not synchronisation
                await asyncio.wait_for(self.stop.wait(), timeout=0.2)
            except TimeoutError:
                pass

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def finish(self) -> None:
        self.stop.set()
        if self.task is not None:
            await self.task  # raises TimeoutError if a submission hung


async def _cluster_env(cluster: RabbitCluster, pg_admin: str, base: Path, pki: Path) -> Env:
    template = f"dptest_tpl_{uuid4().hex[:10]}"
    await create_template(template, pg_admin=pg_admin)
    first = cluster.nodes[0]
    env = await create_env(
        base, pki, template, pg_admin=pg_admin, amqp=first.amqp_url, mgmt=first.management_url
    )
    b = env.settings.broker
    b.urls = cluster.amqp_urls(env.name)
    b.url = b.urls[0]
    b.management_urls = cluster.management_urls
    b.publish_timeout_seconds = 3.0
    b.reconnect_seconds = 0.5
    b.connect_timeout_seconds = 5.0
    return env


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not servers_available(), reason="needs rabbitmq-server and initdb/pg_ctl")
async def test_gateway_on_a_cluster_survives_losing_its_node_and_then_quorum(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path
) -> None:
    """A gateway (intake, sweeper, validator, router) on a 3-node cluster of its own under
    load. SIGKILL the node it is connected to: it reconnects to another, consumes and
    publishes again. SIGKILL the next one: no quorum — senders still get an answer within
    HANG seconds (a kenmerk: the envelope is committed; or a clean fault). Restart both:
    /readyz recovers and every accepted kenmerk is delivered exactly once per recipient."""
    async with rabbit_cluster(3) as cluster, pg_cluster() as pg:
        env = await _cluster_env(cluster, pg.admin_url, tmp_path_factory.mktemp("env"), pki_dir)
        urls = env.settings.broker.nodes
        try:
            gw = await env.start_gateway(components=("intake", "sweeper", "validator", "router"))
            assert gw.broker is not None and gw.broker.connection is not None
            port = env.settings.http.port

            # quorum queues with three members (the default on three nodes)
            management = provision.Management(cluster.management_urls)
            validate = await management.queue(env.name, "digipoort.validate")
            assert _members(validate) == 3, validate.get("members")

            load = Load(gw)
            load.start()

            async def progress(at: int) -> None:
                async def reached() -> bool:
                    return await _count_400(env) >= at

                await wait_for(reached, timeout=240, what=f"{at} deliveries")

            await progress(60)

            # 1. kill the node the gateway is connected to
            first = cluster.node_of(str(gw.broker.connection.url))
            await first.kill()

            async def moved_from(node_port: int) -> bool:
                c = gw.broker.connection if gw.broker else None
                return bool(
                    gw.broker
                    and gw.broker.connected
                    and c is not None
                    and f":{node_port}" not in str(c.url)
                )

            await wait_for(
                lambda: moved_from(first.amqp_port), timeout=120, what="reconnect to another node"
            )
            # consuming and publishing resumed on the new node
            await progress(await _count_400(env) + 60)
            assert await wait_for(lambda: _ready(port), timeout=120, what="/readyz")

            # 2. kill the next node: one of three left, no quorum
            second = cluster.node_of(str(gw.broker.connection.url))
            await second.kill()
            before = len(load.accepted) + len(load.faults)

            async def answered_during_outage() -> bool:
                return len(load.accepted) + len(load.faults) >= before + 20

            await wait_for(answered_during_outage, timeout=240, what="submissions without quorum")
            assert load.task is not None and not load.task.done(), "no submission hung"

            # 3. both back: quorum again
            await asyncio.gather(first.start(), second.start())
            await load.finish()
            assert load.slowest < HANG
            assert await wait_for(lambda: _ready(port), timeout=240, what="/readyz after quorum")

            accepted = load.accepted
            expected = {a.kenmerk for a in accepted}
            assert len(expected) == len(accepted) > 30

            async def all_delivered() -> bool:
                return await _count_400(env) >= 2 * len(expected)

            await wait_for(all_delivered, timeout=400, what="every accepted envelope delivered")
            conn = await env.conn()
            duplicates = 0
            for oin in (CBS, HBAG):
                rows = await conn.fetch(
                    "SELECT kenmerk, count(*) AS n FROM statuses"
                    " WHERE code = '400' AND recipient_oin = $1 GROUP BY kenmerk",
                    oin,
                )
                assert {r["kenmerk"] for r in rows} == expected
                assert all(r["n"] == 1 for r in rows), "one 400 per recipient"
                assert await conn.fetchval(
                    "SELECT count(*) FROM deliveries WHERE recipient_oin = $1", oin
                ) == len(expected)
                ids = await _queue_ids(urls, oin, len(expected), timeout=120)
                assert set(ids) == expected, "every accepted envelope in the recipient queue"
                duplicates += sum(n - 1 for n in ids.values())
            print(
                f"\ncluster: {len(expected)} accepted, {len(load.faults)} clean faults, "
                f"slowest answer {load.slowest:.1f}s, {duplicates} queue copies from the "
                "documented redelivery window"
            )
        finally:
            await env.stop()
