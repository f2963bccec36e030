"""Metering: a durable ledger per organisation per month, counted from the database.

*Aangeleverd* counts the envelopes an organisation submitted (by ``tijdstempel
aangeleverd``), *afgeleverd* the messages delivered to it (status 400 per recipient, by
its time). Organisations outside central government pay ``portal.tariff_eur`` per message
(aangeleverd + afgeleverd); participants with the registry role ``rijksoverheid`` pay
nothing. A month is counted live while it runs (provisional); the first time a past month
is asked for it — or, at the latest, when the portal's hourly closer runs after the month
ended — it is counted once and written to ``metering_ledger`` (closed), and from then on
read from there: the figures of a closed month never change.
"""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import asyncpg
import structlog

from portal.context import Context
from portal.identity import Caller
from portal.operator import require_operator
from portal.problems import Problem

RIJKSOVERHEID = "rijksoverheid"
TARIFF_PLACES = Decimal("0.0001")

log = structlog.get_logger(__name__)

_COUNT = """
WITH a AS (SELECT sender_oin AS oin, count(*) AS n FROM envelopes
           WHERE tijdstempel_aangeleverd >= $1 AND tijdstempel_aangeleverd < $2 GROUP BY 1),
     b AS (SELECT recipient_oin AS oin, count(*) AS n FROM statuses
           WHERE code = '400' AND recipient_oin IS NOT NULL
             AND tijdstempel >= $1 AND tijdstempel < $2 GROUP BY 1)
SELECT coalesce(a.oin, b.oin) AS oin, coalesce(a.n, 0) AS aangeleverd,
       coalesce(b.n, 0) AS afgeleverd
FROM a FULL JOIN b ON a.oin = b.oin ORDER BY 1
"""


@dataclass(frozen=True)
class Line:
    organisation: str
    name: str
    aangeleverd: int
    afgeleverd: int
    rijksoverheid: bool
    tariff: Decimal
    amount: Decimal

    def as_json(self) -> dict[str, Any]:
        return {
            "organisation": self.organisation,
            "name": self.name,
            "aangeleverd": self.aangeleverd,
            "afgeleverd": self.afgeleverd,
            "rijksoverheid": self.rijksoverheid,
            "tariff_eur": str(self.tariff),
            "amount_eur": str(self.amount),
        }


def parse_month(raw: str | None, today: date | None = None) -> date:
    """``YYYY-MM`` (default: this month) as the month's first day; 400 otherwise."""
    if not raw:
        t = today or datetime.now(UTC).date()
        return t.replace(day=1)
    try:
        year, month = raw.split("-")
        if len(year) != 4 or len(month) != 2:
            raise ValueError(raw)
        return date(int(year), int(month), 1)
    except ValueError:
        raise Problem(400, "bad-month", "maand als JJJJ-MM") from None


def _next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _bounds(month: date) -> tuple[datetime, datetime]:
    return (
        datetime(month.year, month.month, 1, tzinfo=UTC),
        datetime(_next(month).year, _next(month).month, 1, tzinfo=UTC),
    )


def amount(aangeleverd: int, afgeleverd: int, rijksoverheid: bool, tariff: Decimal) -> Decimal:
    if rijksoverheid:
        return Decimal("0.00")
    return (tariff * (aangeleverd + afgeleverd)).quantize(Decimal("0.01"), ROUND_HALF_UP)


async def ledger(ctx: Context, caller: Caller, month: date) -> dict[str, Any]:
    """The month's lines; a past month is closed into the ledger on first request (and
    from then on, this request included, read from there)."""
    require_operator(caller)
    this_month = datetime.now(UTC).date().replace(day=1)
    if month > this_month:
        raise Problem(422, "future-month", "die maand is nog niet begonnen")
    lines = await _closed_lines(ctx, month)
    if not lines:
        lines = await _count(ctx, month)
        if month < this_month and lines:
            await close_month(ctx, month, lines)
            lines = await _closed_lines(ctx, month)
    closed = month < this_month and bool(lines)
    return {
        "month": month.strftime("%Y-%m"),
        "closed": closed,
        "lines": [x.as_json() for x in lines],
        "total_eur": str(sum((x.amount for x in lines), Decimal("0.00"))),
    }


async def _closed_lines(ctx: Context, month: date) -> list[Line]:
    rows = await ctx.pool.fetch(
        "SELECT * FROM metering_ledger WHERE month = $1 ORDER BY organisation_oin", month
    )
    return [
        Line(
            r["organisation_oin"],
            _name(ctx, r["organisation_oin"]),
            r["aangeleverd"],
            r["afgeleverd"],
            r["rijksoverheid"],
            r["tariff_eur"],
            r["amount_eur"],
        )
        for r in rows
    ]


async def _count(ctx: Context, month: date) -> list[Line]:
    """The month counted from the envelopes and statuses (as it stands now)."""
    registry = ctx.registry
    # the ledger keeps the tariff to 4 decimals: the running month shows it the same way
    tariff = Decimal(ctx.settings.portal.tariff_eur).quantize(TARIFF_PLACES)
    lines = []
    for r in await ctx.pool.fetch(_COUNT, *_bounds(month)):
        participant = registry.participants.get(r["oin"])
        rijk = participant is not None and RIJKSOVERHEID in participant.roles
        lines.append(
            Line(
                r["oin"],
                _name(ctx, r["oin"]),
                r["aangeleverd"],
                r["afgeleverd"],
                rijk,
                tariff,
                amount(r["aangeleverd"], r["afgeleverd"], rijk, tariff),
            )
        )
    return lines


async def close_month(ctx: Context, month: date, lines: list[Line]) -> None:
    """Write a past month into ``metering_ledger``, once: a month already closed (by
    another request at the same moment) keeps the lines it has."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        # one closing per month at a time; a second finds the first's lines and stops
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('metering'), $1)", month.year * 12 + month.month
        )
        if await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM metering_ledger WHERE month = $1)", month
        ):
            return
        await conn.executemany(
            "INSERT INTO metering_ledger (organisation_oin, month, aangeleverd, afgeleverd,"
            " rijksoverheid, tariff_eur, amount_eur) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [
                (
                    x.organisation,
                    month,
                    x.aangeleverd,
                    x.afgeleverd,
                    x.rijksoverheid,
                    x.tariff,
                    x.amount,
                )
                for x in lines
            ],
        )
    log.info("metering.month_closed", month=month.strftime("%Y-%m"), organisations=len(lines))


async def close_previous_month(ctx: Context, today: date | None = None) -> bool:
    """Close last month into the ledger if nobody asked for it yet (the portal does this
    when it starts and every hour, so a month is closed soon after it ends even when no
    operator looks). True when it was closed now."""
    first = (today or datetime.now(UTC).date()).replace(day=1)
    previous = date(first.year - (first.month == 1), (first.month - 2) % 12 + 1, 1)
    if await _closed_lines(ctx, previous):
        return False
    lines = await _count(ctx, previous)
    if not lines:
        return False
    await close_month(ctx, previous, lines)
    return True


async def closer(ctx: Context, interval: float = 3600.0) -> None:
    """The portal's background task: :func:`close_previous_month` now and every hour."""
    while True:
        try:
            await close_previous_month(ctx)
        except (OSError, asyncpg.PostgresError) as exc:  # next round
            log.warning("metering.close_failed", error=repr(exc))
        await asyncio.sleep(interval)


def _name(ctx: Context, oin: str) -> str:
    p = ctx.registry.participants.get(oin)
    return p.name if p else ""


def to_csv(report: dict[str, Any]) -> str:
    """The ledger as CSV (one line per organisation; text fields neutralised against
    spreadsheet formula injection)."""
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(
        [
            "maand",
            "oin",
            "naam",
            "aangeleverd",
            "afgeleverd",
            "rijksoverheid",
            "tarief_eur",
            "bedrag_eur",
            "afgesloten",
        ]
    )
    for x in report["lines"]:
        name = x["name"]
        if name[:1] in ("=", "+", "-", "@"):
            name = "'" + name
        w.writerow(
            [
                report["month"],
                x["organisation"],
                name,
                x["aangeleverd"],
                x["afgeleverd"],
                "ja" if x["rijksoverheid"] else "nee",
                x["tariff_eur"],
                x["amount_eur"],
                "ja" if report["closed"] else "nee",
            ]
        )
    return out.getvalue()
