"""Metering: a durable ledger per organisation per month, counted from the database.

*Aangeleverd* counts the envelopes an organisation submitted (by ``tijdstempel
aangeleverd``), *afgeleverd* the messages delivered to it (status 400 per recipient, by
its time). Organisations outside central government pay ``portal.tariff_eur`` per message
(aangeleverd + afgeleverd); participants with the registry role ``rijksoverheid`` pay
nothing. A month is counted live while it runs (provisional); the first time a past month
is asked for it is counted once and written to ``metering_ledger`` (closed), and from
then on read from there: the figures of a closed month never change.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from portal.context import Context
from portal.identity import Caller
from portal.operator import require_operator
from portal.problems import Problem

RIJKSOVERHEID = "rijksoverheid"

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
    """The month's lines; a past month is closed into the ledger on first request."""
    require_operator(caller)
    this_month = datetime.now(UTC).date().replace(day=1)
    if month > this_month:
        raise Problem(422, "future-month", "die maand is nog niet begonnen")
    registry = ctx.registry
    rows = await ctx.pool.fetch(
        "SELECT * FROM metering_ledger WHERE month = $1 ORDER BY organisation_oin", month
    )
    closed = bool(rows)
    if closed:
        lines = [
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
    else:
        tariff = Decimal(ctx.settings.portal.tariff_eur)
        counted = await ctx.pool.fetch(_COUNT, *_bounds(month))
        lines = []
        for r in counted:
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
        if month < this_month and lines:
            await ctx.pool.executemany(
                "INSERT INTO metering_ledger (organisation_oin, month, aangeleverd, afgeleverd,"
                " rijksoverheid, tariff_eur, amount_eur) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT DO NOTHING",
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
            closed = True
    return {
        "month": month.strftime("%Y-%m"),
        "closed": closed,
        "lines": [x.as_json() for x in lines],
        "total_eur": str(sum((x.amount for x in lines), Decimal("0.00"))),
    }


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
