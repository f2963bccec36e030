"""For recipients: the inbox (messages delivered to me) and reporting my processing
status (zetStatus 500/510, recorded by the same function as the AMQP and WUS variants)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog

from portal import cursor
from portal.context import Context
from portal.envelopes import Page
from portal.identity import Caller
from portal.problems import Problem, not_found
from routing.statusreports import Refused, ZetStatus, record_zet_status

log = structlog.get_logger(__name__)

REPORTABLE = ("500", "510")


async def inbox(ctx: Context, caller: Caller, *, after: str | None, limit: int) -> Page:
    args: list[Any] = [caller.oin, limit + 1]
    keyset = ""
    if after is not None:
        at, key = cursor.decode_uuid(after)
        args += [at, key]
        keyset = " AND (d.created_at, d.kenmerk) < ($3::timestamptz, $4::uuid)"
    rows = await ctx.pool.fetch(
        "SELECT d.kenmerk, d.created_at, d.channel, d.state, d.delivered_at, e.berichtsoort,"  # noqa: S608
        " e.sender_oin, e.aanleverkenmerk,"
        " (SELECT s.code FROM statuses s WHERE s.kenmerk = d.kenmerk AND s.recipient_oin = $1"
        "  AND s.code IN ('500', '510') ORDER BY s.id DESC LIMIT 1) AS reported"
        " FROM deliveries d JOIN envelopes e ON e.kenmerk = d.kenmerk"
        f" WHERE d.recipient_oin = $1{keyset}"
        " ORDER BY d.created_at DESC, d.kenmerk DESC LIMIT $2",
        *args,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        {
            "kenmerk": str(r["kenmerk"]),
            "berichtsoort": r["berichtsoort"],
            "sender": r["sender_oin"],
            "aanleverkenmerk": r["aanleverkenmerk"],
            "channel": r["channel"],
            "state": r["state"],
            "created": r["created_at"].isoformat(),
            "delivered": r["delivered_at"].isoformat() if r["delivered_at"] else None,
            "reported": r["reported"],
        }
        for r in rows
    ]
    nxt = cursor.encode(rows[-1]["created_at"], rows[-1]["kenmerk"]) if more and rows else None
    return Page(items, nxt)


async def report_status(
    ctx: Context, caller: Caller, kenmerk: UUID, code: str, details: str | None
) -> dict[str, Any]:
    """zetStatus from the portal; only a recipient of the kenmerk may (else 404)."""
    if code not in REPORTABLE:
        raise Problem(422, "status-code", "statuscode 500 of 510")
    text = (details or "").strip()[:2000] or None
    report = ZetStatus(
        kenmerk=kenmerk,
        statuscode=code,
        tijdstempel=datetime.now(UTC),
        details=text,
    )
    try:
        await record_zet_status(ctx.pool, caller.oin, report)
    except Refused:
        raise not_found() from None
    log.info("portal.zetstatus", kenmerk=str(kenmerk), recipient=caller.oin, code=code)
    return {"kenmerk": str(kenmerk), "code": code, "tijdstempel": report.tijdstempel.isoformat()}
