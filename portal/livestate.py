"""Live state for operators: queue depths, rates and consumers (RabbitMQ management API),
circuit breakers (as the deliverer processes record them in ``circuit_breakers``) and push
deliveries waiting for retries, certificate and CRL expiry."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import structlog

from digipoort.opsmetrics import expiry_dates
from digipoort.provision import Management, vhost_of
from portal.context import Context
from portal.identity import Caller
from portal.operator import require_operator
from routing.afleveren.deliverer import open_breakers

log = structlog.get_logger(__name__)

_COLUMNS = (
    "name,messages,consumers,message_stats.publish_details.rate,"
    "message_stats.deliver_get_details.rate"
)


def _rate(q: dict[str, Any], key: str) -> float:
    stats = q.get("message_stats")
    if isinstance(stats, dict):
        details = stats.get(key)
        if isinstance(details, dict):
            return float(details.get("rate") or 0.0)
    return 0.0


async def queues(ctx: Context) -> tuple[list[dict[str, Any]], str | None]:
    management = Management(ctx.settings.broker.management_nodes)
    vhost = vhost_of(ctx.settings.broker.url)
    try:
        result = await management.request(
            "GET", f"/queues/{quote(vhost, safe='')}?columns={_COLUMNS}"
        )
    except Exception as exc:
        log.warning("portal.management_unavailable", error=type(exc).__name__)
        return [], "de beheer-API van RabbitMQ is niet bereikbaar"
    found = []
    for q in result if isinstance(result, list) else []:
        if isinstance(q, dict) and str(q.get("name", "")).startswith("digipoort."):
            found.append(
                {
                    "name": str(q["name"]),
                    "messages": int(q.get("messages") or 0),
                    "consumers": int(q.get("consumers") or 0),
                    "publish_rate": round(_rate(q, "publish_details"), 2),
                    "deliver_rate": round(_rate(q, "deliver_get_details"), 2),
                }
            )
    return sorted(found, key=lambda q: q["name"]), None


async def live_state(ctx: Context, caller: Caller) -> dict[str, Any]:
    require_operator(caller)
    found, problem = await queues(ctx)
    waiting = await ctx.pool.fetch(
        "SELECT recipient_oin, count(*) AS pending, max(attempts) AS max_attempts,"
        " min(next_attempt_at) AS next_attempt FROM deliveries"
        " WHERE state = 'pending' AND channel IN ('wus', 'smtp') AND attempts > 0"
        " GROUP BY recipient_oin ORDER BY recipient_oin"
    )
    breakers = await open_breakers(ctx.pool)
    now = datetime.now(UTC)
    expiry = [
        {
            "kind": kind,
            "subject": subject,
            "not_after": when.isoformat(),
            "days_left": round((when - now).total_seconds() / 86400, 1),
        }
        for (subject, kind), when in sorted(expiry_dates(ctx.settings).items())
    ]
    return {
        "queues": found,
        "queues_problem": problem,
        "breakers": [{"recipient": k, "state": v} for k, v in sorted(breakers.items())],
        "retrying": [
            {
                "recipient": r["recipient_oin"],
                "pending": r["pending"],
                "max_attempts": r["max_attempts"],
                "next_attempt": r["next_attempt"].isoformat() if r["next_attempt"] else None,
            }
            for r in waiting
        ],
        "expiry": expiry,
    }
