"""Operator actions, each confirmed (a reason is required) and audited with the
operator's identity: retry a dead letter, discard one, re-push a delivery that ended in
410. Also the dead-letter list and the audit log."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog

from portal import cursor
from portal.context import Context
from portal.envelopes import Page
from portal.identity import Caller
from portal.problems import Problem
from routing import deadletters
from routing.repush import repush_failed

log = structlog.get_logger(__name__)

ACTIONS = ("retry", "discard", "repush")
MAX_REASON = 500


def require_operator(caller: Caller) -> None:
    if not caller.operator:
        raise Problem(403, "operators-only", "alleen voor beheerders")


def _reason(raw: str | None) -> str:
    reason = (raw or "").strip()
    if not reason:
        raise Problem(422, "reason-required", "geef een reden op (de actie wordt vastgelegd)")
    return reason[:MAX_REASON]


async def _audit(
    ctx: Context,
    caller: Caller,
    action: str,
    kenmerk: UUID,
    recipient: str | None,
    reason: str,
    outcome: str,
) -> None:
    await ctx.pool.execute(
        "INSERT INTO portal_audit (operator_oin, fingerprint, action, kenmerk, recipient_oin,"
        " reason, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        caller.oin,
        caller.fingerprint,
        action,
        kenmerk,
        recipient,
        reason,
        outcome,
    )
    log.warning(
        "portal.operator_action",
        operator=caller.oin,
        action=action,
        kenmerk=str(kenmerk),
        recipient=recipient,
        outcome=outcome,
    )


async def act(
    ctx: Context,
    caller: Caller,
    action: str,
    kenmerk: UUID,
    *,
    reason: str | None,
    recipient: str | None = None,
    confirmed: bool,
) -> dict[str, Any]:
    """Run one operator action; 409 when there was nothing to act on."""
    require_operator(caller)
    if action not in ACTIONS:
        raise Problem(404, "not-found", "onbekende actie")
    why = _reason(reason)
    if not confirmed:
        raise Problem(422, "confirm-required", "bevestig de actie")
    amqp = ctx.settings.broker.nodes
    if action == "repush":
        if not recipient:
            raise Problem(422, "recipient-required", "kies de ontvanger")
        done = await repush_failed(ctx.pool, kenmerk, recipient)
    elif action == "retry":
        done = bool(await deadletters.retry(amqp, ctx.pool, {str(kenmerk)}, actor=caller.actor))
    else:
        done = bool(
            await deadletters.discard(
                amqp, ctx.pool, {str(kenmerk)}, actor=caller.actor, reason=why
            )
        )
    outcome = "done" if done else "nothing to do"
    await _audit(ctx, caller, action, kenmerk, recipient, why, outcome)
    if not done:
        raise Problem(409, "nothing-to-do", f"{action}: niets gevonden voor dit kenmerk")
    return {"action": action, "kenmerk": str(kenmerk), "recipient": recipient, "outcome": outcome}


async def dead_letters(ctx: Context, caller: Caller) -> list[dict[str, Any]]:
    require_operator(caller)
    letters = await deadletters.list_dead(ctx.settings.broker.nodes)
    return [letter.as_dict() for letter in letters[:1000]]


async def audit_log(ctx: Context, caller: Caller, *, after: str | None, limit: int) -> Page:
    require_operator(caller)
    args: list[Any] = [limit + 1]
    keyset = ""
    if after is not None:
        at, key = cursor.decode_int(after)
        args += [at, key]
        keyset = "WHERE (at, id) < ($2::timestamptz, $3::bigint)"
    rows = await ctx.pool.fetch(
        f"SELECT * FROM portal_audit {keyset} ORDER BY at DESC, id DESC LIMIT $1",  # noqa: S608
        *args,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "id": r["id"],
            "at": r["at"].isoformat(),
            "operator": r["operator_oin"],
            "fingerprint": r["fingerprint"],
            "action": r["action"],
            "kenmerk": str(r["kenmerk"]) if r["kenmerk"] else None,
            "recipient": r["recipient_oin"],
            "reason": r["reason"],
            "outcome": r["outcome"],
        }
        for r in rows
    ]
    nxt = cursor.encode(rows[-1]["at"], rows[-1]["id"]) if more and rows else None
    return Page(items, nxt)
