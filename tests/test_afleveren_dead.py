"""Dead letters: a poison message ends in digipoort.dead with its reason, the sender's
history says so, and operators can list, retry and discard (real RabbitMQ/PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

import pytest
from click.testing import CliRunner, Result

from digipoort.cli import main
from routing.deadletters import DeadLetter, list_dead
from routing.router import RoutingStage
from tests.support import BELASTINGDIENST, Env, aanlevering, wait_for


async def cli(env: Env, *args: str) -> Result:
    return await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--config", str(env.config_path)]
    )


async def dead_letters(env: Env, expect: int) -> list[DeadLetter]:
    async def check() -> list[DeadLetter] | None:
        letters = await list_dead(env.amqp_url)
        return letters if len(letters) == expect else None

    return await wait_for(check, timeout=30, what=f"{expect} dead letters")


async def test_poison_message_dead_lettered_with_reason_and_status(env: Env) -> None:
    env.settings.broker.delivery_limit = 2
    gw = await env.start_gateway(components=("intake", "sweeper", "router", "deadletters"))
    assert gw.intake is not None
    calls: list[UUID] = []

    async def poison(kenmerken: list[UUID]) -> None:
        calls.extend(kenmerken)
        raise RuntimeError("schema store unavailable")

    await gw.consume("validate", poison)
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))

    history = await env.wait_status(accepted.kenmerk, "321", timeout=30)
    [dead] = [s for s in history if s.code == "321"]
    assert dead.foutcode == "VAS400"
    assert dead.details is not None and "schema store unavailable" in dead.details
    assert [s.code for s in history] == ["105", "100", "110", "321"]
    assert calls == [accepted.kenmerk] * 3  # first delivery + delivery_limit redeliveries

    [letter] = await dead_letters(env, 1)
    assert letter.kenmerk == str(accepted.kenmerk)
    assert letter.stage == "validate"
    assert letter.queue == "digipoort.validate"
    assert "schema store unavailable" in letter.reason
    assert letter.count == 3
    # listing leaves it in place
    assert await env.queue_depth("digipoort.dead") == 1

    result = await cli(env, "dead", "list", "--json")
    assert result.exit_code == 0, result.output
    [listed] = json.loads(result.stdout)
    assert listed["kenmerk"] == str(accepted.kenmerk) and listed["stage"] == "validate"
    result = await cli(env, "dead", "show", str(accepted.kenmerk))
    assert result.exit_code == 0 and "schema store unavailable" in result.output


async def test_dead_retry_delivers_it(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation and routing are one stage (issue 15): an envelope that keeps failing
    after it was validated and routed (its recipient publishes fail) is dead-lettered from
    digipoort.validate, recorded as a routing failure (410 AFS400), and a retry delivers
    only what is still pending."""
    env.settings.broker.delivery_limit = 1
    broken = True
    original = RoutingStage.deliver

    async def deliver(
        self: RoutingStage, records: dict[UUID, Any], pending: list[tuple[UUID, str]]
    ) -> None:
        if broken and pending:
            raise RuntimeError("routing table locked")
        await original(self, records, pending)

    monkeypatch.setattr(RoutingStage, "deliver", deliver)
    gw = await env.start_gateway(components=("intake", "sweeper", "stages", "deadletters"))
    assert gw.intake is not None
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    history = await env.wait_status(accepted.kenmerk, "410", timeout=30)
    [dead] = [s for s in history if s.code == "410"]
    assert dead.foutcode == "AFS400" and dead.recipient_oin is None
    assert dead.details is not None and "routing table locked" in dead.details
    assert "321" not in [s.code for s in history]
    [letter] = await dead_letters(env, 1)
    assert letter.stage == "validate"

    broken = False
    result = await cli(env, "dead", "retry", str(accepted.kenmerk), "--actor", "operator")
    assert result.exit_code == 0, result.output
    assert f"retried {accepted.kenmerk}" in result.output

    await env.wait_status(accepted.kenmerk, "400", recipient=BELASTINGDIENST)
    [msg] = await env.queue_messages(BELASTINGDIENST, expect=1)
    assert msg.message_id == str(accepted.kenmerk)
    assert await env.queue_depth("digipoort.dead") == 0
    conn = await env.conn()
    row = await conn.fetchrow("SELECT actor, action, kenmerk, stage FROM dead_letter_actions")
    assert dict(row) == {
        "actor": "operator",
        "action": "retry",
        "kenmerk": str(accepted.kenmerk),
        "stage": "validate",
    }


async def test_dead_discard_records_final_status_and_removes(env: Env) -> None:
    env.settings.broker.delivery_limit = 1
    gw = await env.start_gateway(components=("intake", "sweeper", "router"))
    assert gw.intake is not None

    async def poison(kenmerken: list[UUID]) -> None:
        raise ValueError("cannot parse")

    await gw.consume("validate", poison)
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await dead_letters(env, 1)
    # no deadletters component ran: the history queue keeps the dead letter for it
    assert await env.queue_depth("digipoort.dead.history") == 1

    result = await cli(env, "dead", "discard", str(accepted.kenmerk), "--reason", "sender asked")
    assert result.exit_code == 0, result.output
    assert await env.queue_depth("digipoort.dead") == 0
    history = await env.history(accepted.kenmerk)
    [final] = [s for s in history if s.code == "321"]
    assert final.foutbeschrijving is not None and "sender asked" in final.foutbeschrijving
    conn = await env.conn()
    assert await conn.fetchval("SELECT action FROM dead_letter_actions") == "discard"

    # a later deadletters component records nothing twice
    await env.start_gateway(components=("deadletters",), serve_http=False)

    async def drained() -> bool:
        return await env.queue_depth("digipoort.dead.history") == 0

    await wait_for(drained, what="dead.history drained")
    history = await env.history(accepted.kenmerk)
    assert [s.code for s in history].count("321") == 1

    result = await cli(env, "dead", "retry", "00000000-0000-0000-0000-000000000000")
    assert result.exit_code == 1
