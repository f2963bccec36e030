"""Validation and routing as one stage (issue 15): upgrade safety for work items still in
the former ``digipoort.route`` queue, the component names, and batch acks that never
cover a message held for its retry (real RabbitMQ and PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest

from digipoort.app import Gateway
from digipoort.broker import ROUTE
from digipoort.envelopestore import set_stage
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from routing.afleveren.schedule import CircuitBreaker
from tests.support import BELASTINGDIENST, Env, aanlevering, wait_for

HAPPY = ["105", "100", "110", "200", "301", "405", "400"]


async def _old_validator(env: Env, count: int) -> list[UUID]:
    """What a validator of the previous version left behind at the upgrade: envelopes
    validated (200, 301, stage gevalideerd) with their work items in digipoort.route."""
    gw = await env.start_gateway(components=("intake", "sweeper"), serve_http=False)
    assert gw.intake is not None and gw.pool is not None and gw.broker is not None
    pool, broker = gw.pool, gw.broker

    async def validate_like_before(kenmerken: list[UUID]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await write_statuses(conn, [Status(k, c) for k in kenmerken for c in ("200", "301")])
            await set_stage(conn, dict.fromkeys(kenmerken, "gevalideerd"))
        for k in kenmerken:
            await broker.publish_work(ROUTE, k)

    await gw.consume("validate", validate_like_before)
    accepted = [
        (await gw.intake.aanleveren(aanlevering("Omzetbelasting"))).kenmerk for _ in range(count)
    ]

    async def all_in_route_queue() -> bool:
        return await env.queue_depth("digipoort.route") == count

    await wait_for(all_in_route_queue, timeout=30, what="the old validator's work items")
    await gw.stop()
    return accepted


async def _delivered_once(env: Env, kenmerken: list[UUID]) -> None:
    for k in kenmerken:
        history = await env.wait_status(k, "400", recipient=BELASTINGDIENST, timeout=30)
        assert [s.code for s in history] == HAPPY
    messages = await env.queue_messages(BELASTINGDIENST, expect=len(kenmerken), settle=0.5)
    assert sorted(m.message_id or "" for m in messages) == sorted(str(k) for k in kenmerken)
    assert await env.queue_depth("digipoort.route") == 0


@pytest.mark.parametrize("components", [("stages",), ("validator",), ("router",)])
async def test_route_queue_left_at_the_upgrade_is_routed(
    env: Env, components: tuple[str, ...]
) -> None:
    """Messages in digipoort.route at upgrade time are processed by the new stage (it
    keeps consuming the former queue), or by ``router`` alone: never lost."""
    kenmerken = await _old_validator(env, 5)
    await env.start_gateway(components=components, serve_http=False)
    await _delivered_once(env, kenmerken)


async def test_validator_and_router_together_start_the_stage_once(env: Env) -> None:
    gw = await env.start_gateway(
        components=("intake", "validator", "router", "stages"), serve_http=False
    )
    assert gw.intake is not None
    assert sorted(c.stage for c in gw._consumers) == ["route", "validate"]
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await _delivered_once(env, [accepted.kenmerk])


async def test_batch_ack_never_covers_a_message_held_for_its_retry(env: Env) -> None:
    """The first message fails and waits out its backoff unacked; the batches behind it
    are acked with ``multiple=True`` — which must not ack the held one (it would be lost:
    never retried)."""
    env.settings.broker.retry_backoff_seconds = 0.5
    env.settings.broker.gather_ms = 50.0  # batches of several at this light load
    gw: Gateway = await env.start_gateway(components=("intake", "sweeper"), serve_http=False)
    assert gw.intake is not None
    intake = gw.intake
    handled: list[UUID] = []
    tried: list[UUID] = []
    sizes: list[int] = []
    poison: set[UUID] = set()

    async def handler(kenmerken: list[UUID]) -> None:
        sizes.append(len(kenmerken))
        tried.extend(kenmerken)
        if poison & set(kenmerken):
            raise LookupError("fails once (test)")
        handled.extend(kenmerken)

    bad = await intake.aanleveren(aanlevering("Omzetbelasting"))
    poison.add(bad.kenmerk)
    await gw.consume("validate", handler)
    await wait_for(lambda: _true(bad.kenmerk in tried), timeout=10, what="the first try")
    good = await asyncio.gather(
        *(intake.aanleveren(aanlevering("Omzetbelasting")) for _ in range(8))
    )
    await wait_for(
        lambda: _true({a.kenmerk for a in good} <= set(handled)),
        timeout=20,
        what="the others handled",
    )
    assert max(sizes) > 1, "the test needs a batch of several (an ack with multiple=True)"
    poison.clear()
    await wait_for(lambda: _true(bad.kenmerk in handled), timeout=20, what="the retry")
    assert tried.count(bad.kenmerk) == 2

    async def queue_empty() -> bool:
        return await env.queue_depth("digipoort.validate") == 0

    await wait_for(queue_empty, timeout=20, what="every message acked")


async def _true(value: bool) -> bool:
    return value


def test_open_breaker_tells_the_deliverer_when_to_wake() -> None:
    """The deliverer sleeps until NOTIFY, the next due time or a breaker's trial (no
    polling): an open breaker says when its trial is due; closed or trying: never."""
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    b = CircuitBreaker(failures=1, reset=10)
    assert b.half_open_at() is None
    b.failure(now)
    assert b.half_open_at() == now + timedelta(seconds=10)
    b.begin_trial()
    assert b.half_open_at() is None
    b.success()
    assert b.half_open_at() is None
