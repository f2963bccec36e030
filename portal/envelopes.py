"""Envelopes as the portal shows them: lists and the message-log search (keyset
pagination), the envelope page, documents. Every function is scoped to the caller: a
sender sees what it sent, a recipient what was delivered to it, an operator everything;
someone else's kenmerk answers exactly like an unknown one (:func:`not_found`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from digipoort.registry import KOPPELVLAKKEN
from portal import cursor
from portal.context import Context
from portal.identity import Caller
from portal.problems import Problem, clean_text, not_found
from portal.validation import findings_from_details
from routing.afleveren.deliverer import open_breakers
from routing.download import record_fetch

log = structlog.get_logger(__name__)

MAX_PAGE = 200
#: a status code with fewer rows than this is searched from the code index
RARE_ROWS = 50_000
_STATS_TTL = 60.0
_code_rows: dict[str, float] = {}
_code_rows_at = 0.0


async def _rare_code(pool: asyncpg.Pool, code: str) -> bool:
    """Whether few statuses carry ``code``, from the planner's statistics (cached)."""
    global _code_rows_at
    if time.monotonic() - _code_rows_at > _STATS_TTL:
        row = await pool.fetchrow(
            "SELECT s.most_common_vals::text::text[] AS vals, s.most_common_freqs AS freqs,"
            " c.reltuples FROM pg_stats s JOIN pg_class c ON c.relname = s.tablename"
            " WHERE s.schemaname = 'public' AND s.tablename = 'statuses' AND s.attname = 'code'"
        )
        _code_rows.clear()
        if row is not None and row["vals"] is not None:
            for value, freq in zip(row["vals"], row["freqs"], strict=False):
                _code_rows[value] = float(freq) * max(float(row["reltuples"]), 0.0)
        _code_rows_at = time.monotonic()
    return _code_rows.get(code, 0.0) < RARE_ROWS


@dataclass(frozen=True)
class Filters:
    """Search filters; ``None`` means "any". Period is [since, until)."""

    kenmerk: UUID | None = None
    sender: str | None = None
    recipient: str | None = None
    berichtsoort: str | None = None
    koppelvlak: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    aanleverkenmerk: str | None = None


@dataclass
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None


def _oin(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    assert value is not None
    if len(value) != 20 or not value.isdigit():
        raise Problem(400, "bad-filter", f"{name}: een OIN heeft 20 cijfers")
    return value


def parse_filters(query: dict[str, str]) -> Filters:
    """Filters from query parameters (pages and API share this); 400 on bad values."""

    def text(name: str, limit: int = 80) -> str | None:
        value = clean_text(name, (query.get(name) or "").strip(), multiline=False)
        if len(value) > limit:
            raise Problem(400, "bad-filter", f"{name}: te lang")
        return value or None

    def when(name: str) -> datetime | None:
        value = text(name, 40)
        if value is None:
            return None
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise Problem(400, "bad-filter", f"{name}: geen datum/tijd (ISO 8601)") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed

    kenmerk = None
    raw = text("kenmerk", 40)
    if raw:
        try:
            kenmerk = UUID(raw)
        except ValueError:
            raise Problem(400, "bad-filter", "kenmerk: geen geldig kenmerk") from None
    status = text("status", 3)
    if status is not None and not (len(status) == 3 and status.isdigit()):
        raise Problem(400, "bad-filter", "status: een statuscode heeft 3 cijfers")
    koppelvlak = text("koppelvlak", 10)
    if koppelvlak is not None and koppelvlak not in KOPPELVLAKKEN:
        raise Problem(400, "bad-filter", "koppelvlak: onbekend")
    return Filters(
        kenmerk=kenmerk,
        sender=_oin(text("sender", 20), "sender"),
        recipient=_oin(text("recipient", 20), "recipient"),
        berichtsoort=text("berichtsoort"),
        koppelvlak=koppelvlak,
        status=status,
        since=when("since"),
        until=when("until"),
        aanleverkenmerk=text("aanleverkenmerk", 200),
    )


def page_limit(query: dict[str, str], default: int) -> int:
    raw = query.get("limit") or ""
    if not raw:
        return min(default, MAX_PAGE)
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise Problem(400, "bad-limit", f"limit: 1 tot en met {MAX_PAGE}")
    return int(raw)


# The page's envelopes first (filters, keyset, limit), then the current status and the
# recipients of those rows only.
_SUMMARY = """
SELECT e.kenmerk, e.berichtsoort, e.koppelvlak, e.sender_oin, e.aanleverkenmerk,
       e.tijdstempel_aangeleverd,
       last.code AS status, last.tijdstempel AS status_at,
       coalesce((SELECT array_agg(d.recipient_oin ORDER BY d.recipient_oin)
                 FROM deliveries d WHERE d.kenmerk = e.kenmerk), '{{}}') AS recipients
FROM (SELECT e.kenmerk FROM {source} WHERE {where}
      ORDER BY e.tijdstempel_aangeleverd DESC, e.kenmerk DESC LIMIT {limit}) page
JOIN envelopes e ON e.kenmerk = page.kenmerk
LEFT JOIN LATERAL (SELECT s.code, s.tijdstempel FROM statuses s WHERE s.kenmerk = e.kenmerk
                   ORDER BY s.id DESC LIMIT 1) last ON true
ORDER BY e.tijdstempel_aangeleverd DESC, e.kenmerk DESC
"""


def _summary(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "kenmerk": str(r["kenmerk"]),
        "berichtsoort": r["berichtsoort"],
        "koppelvlak": r["koppelvlak"],
        "sender": r["sender_oin"],
        "aanleverkenmerk": r["aanleverkenmerk"],
        "tijdstempel": r["tijdstempel_aangeleverd"].isoformat(),
        "recipients": list(r["recipients"]),
        "status": r["status"],
        "status_tijdstempel": r["status_at"].isoformat() if r["status_at"] else None,
    }


async def search(
    ctx: Context, caller: Caller, f: Filters, *, after: str | None, limit: int, scope: str
) -> Page:
    """The envelope list: ``scope`` ``"sent"`` (the caller's own), ``"all"`` (operators)."""
    if scope == "all" and not caller.operator:
        raise Problem(403, "operators-only", "alleen voor beheerders")
    conds: list[str] = []
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    source = "envelopes e"
    if scope == "sent":
        conds.append(f"e.sender_oin = {arg(caller.oin)}")
    # (column and operator, filter value): fixed SQL text, values only as placeholders
    for column, value in (
        ("e.kenmerk =", f.kenmerk),
        ("e.sender_oin =", f.sender),
        ("e.berichtsoort =", f.berichtsoort),
        ("e.koppelvlak =", f.koppelvlak),
        ("e.aanleverkenmerk =", f.aanleverkenmerk),
        ("e.tijdstempel_aangeleverd >=", f.since),
        ("e.tijdstempel_aangeleverd <", f.until),
    ):
        if value is not None:
            conds.append(f"{column} {arg(value)}")
    if f.recipient is not None:
        conds.append(
            "EXISTS (SELECT 1 FROM deliveries d WHERE d.kenmerk = e.kenmerk"  # noqa: S608 - placeholders only
            f" AND d.recipient_oin = {arg(f.recipient)})"
        )
    if f.status is not None:
        if await _rare_code(ctx.pool, f.status):
            # few envelopes have it: collect them from the code index, then look each up
            # in the covering index (LATERAL + OFFSET 0: always this plan, whatever the
            # estimates; index-only, no heap access)
            source = (
                "(SELECT DISTINCT s.kenmerk FROM statuses s"  # noqa: S608 - placeholder only
                f" WHERE s.code = {arg(f.status)}) h,"
                " LATERAL (SELECT x.kenmerk, x.tijdstempel_aangeleverd, x.sender_oin,"
                " x.berichtsoort, x.koppelvlak, x.aanleverkenmerk FROM envelopes x"
                " WHERE x.kenmerk = h.kenmerk OFFSET 0) e"
            )
        else:
            # most envelopes have it: walk the time index and probe each envelope
            conds.append(
                "EXISTS (SELECT 1 FROM statuses s WHERE s.kenmerk = e.kenmerk"  # noqa: S608
                f" AND s.code = {arg(f.status)})"
            )
    if after is not None:
        at, key = cursor.decode_uuid(after)
        conds.append(
            f"(e.tijdstempel_aangeleverd, e.kenmerk) < ({arg(at)}::timestamptz, {arg(key)}::uuid)"
        )
    sql = _SUMMARY.format(source=source, where=" AND ".join(conds) or "true", limit=limit + 1)
    rows = await ctx.pool.fetch(sql, *args)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (
        cursor.encode(rows[-1]["tijdstempel_aangeleverd"], rows[-1]["kenmerk"])
        if more and rows
        else None
    )
    return Page([_summary(r) for r in rows], next_cursor)


# ------------------------------------------------------------------- one envelope


@dataclass
class Access:
    """How the caller relates to an envelope."""

    sender: bool
    recipient: bool
    operator: bool
    row: asyncpg.Record = field(repr=False)


async def access(ctx: Context, caller: Caller, kenmerk: UUID) -> Access:
    """The caller's access to an envelope, or the one 404 for unknown and not-yours."""
    row = await ctx.pool.fetchrow(
        "SELECT e.*, EXISTS (SELECT 1 FROM deliveries d WHERE d.kenmerk = e.kenmerk"
        " AND d.recipient_oin = $2) AS is_recipient FROM envelopes e WHERE e.kenmerk = $1",
        kenmerk,
        caller.oin,
    )
    if row is None:
        raise not_found()
    a = Access(row["sender_oin"] == caller.oin, bool(row["is_recipient"]), caller.operator, row)
    if not (a.sender or a.recipient or a.operator):
        raise not_found()
    return a


def parse_kenmerk(raw: str) -> UUID:
    try:
        return UUID(raw)
    except ValueError:
        raise not_found() from None


def _status(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": r["id"],
        "code": r["code"],
        "omschrijving": r["omschrijving"],
        "tijdstempel": r["tijdstempel"].isoformat(),
        "recipient": r["recipient_oin"],
        "foutcode": r["foutcode"],
        "foutbeschrijving": r["foutbeschrijving"],
        "details": r["details"],
    }


async def statuses(
    ctx: Context, caller: Caller, kenmerk: UUID, *, after_id: int = 0
) -> list[dict[str, Any]]:
    """The history (for live updates: only ids above ``after_id``). A recipient that is
    not the sender sees the general statuses and its own."""
    a = await access(ctx, caller, kenmerk)
    own_only = not (a.sender or a.operator)
    rows = await ctx.pool.fetch(
        "SELECT * FROM statuses WHERE kenmerk = $1 AND id > $2"
        " AND (NOT $3 OR recipient_oin IS NULL OR recipient_oin = $4) ORDER BY id LIMIT 1000",
        kenmerk,
        after_id,
        own_only,
        caller.oin,
    )
    return [_status(r) for r in rows]


async def detail(ctx: Context, caller: Caller, kenmerk: UUID) -> dict[str, Any]:
    """The envelope page: fields, documents, history, findings; for operators also the
    deliveries (attempts, next attempt, breaker), fetches (402) and the audit trail."""
    a = await access(ctx, caller, kenmerk)
    e = a.row
    history = await statuses(ctx, caller, kenmerk)
    docs = await ctx.pool.fetch(
        "SELECT seq, mime_type, bestandsnaam, size, sha256 FROM documents WHERE kenmerk = $1"
        " ORDER BY seq",
        kenmerk,
    )
    findings = [
        f.as_json()
        for s in history
        if s["code"] == "311"
        for f in findings_from_details(s["details"])
    ]
    result: dict[str, Any] = {
        "kenmerk": str(kenmerk),
        "berichtsoort": e["berichtsoort"],
        "koppelvlak": e["koppelvlak"],
        "sender": e["sender_oin"],
        "aanleverkenmerk": e["aanleverkenmerk"],
        "tijdstempel": e["tijdstempel_aangeleverd"].isoformat(),
        "stage": e["stage"],
        "documents": [
            {
                "seq": d["seq"],
                "bestandsnaam": d["bestandsnaam"],
                "mime_type": d["mime_type"],
                "size": d["size"],
                "sha256": d["sha256"],
            }
            for d in docs
        ],
        "statuses": history,
        "findings": findings,
        "may_download": a.sender or a.recipient,
        "is_recipient": a.recipient,
    }
    if caller.operator:
        result.update(await _operator_detail(ctx, kenmerk))
    return result


async def _operator_detail(ctx: Context, kenmerk: UUID) -> dict[str, Any]:
    breakers = await open_breakers(ctx.pool)
    deliveries = await ctx.pool.fetch(
        "SELECT recipient_oin, channel, state, attempts, next_attempt_at, last_error,"
        " created_at, delivered_at FROM deliveries WHERE kenmerk = $1 ORDER BY recipient_oin",
        kenmerk,
    )
    fetches = await ctx.pool.fetch(
        "SELECT seq, recipient_oin, requests, bytes_sent, first_complete_at, last_fetch_at"
        " FROM gb_fetches WHERE kenmerk = $1 ORDER BY seq, recipient_oin",
        kenmerk,
    )
    audit = await ctx.pool.fetch(
        "SELECT at, operator_oin, action, recipient_oin, reason, outcome FROM portal_audit"
        " WHERE kenmerk = $1 ORDER BY id",
        kenmerk,
    )

    def iso(v: datetime | None) -> str | None:
        return v.isoformat() if v else None

    return {
        "deliveries": [
            {
                "recipient": d["recipient_oin"],
                "channel": d["channel"],
                "state": d["state"],
                "attempts": d["attempts"],
                "next_attempt": iso(d["next_attempt_at"]),
                "last_error": d["last_error"],
                "created": iso(d["created_at"]),
                "delivered": iso(d["delivered_at"]),
                "breaker": breakers.get(d["recipient_oin"], "closed"),
                "repushable": d["state"] == "failed" and d["channel"] in ("wus", "smtp"),
            }
            for d in deliveries
        ],
        "fetches": [
            {
                "seq": f["seq"],
                "recipient": f["recipient_oin"],
                "requests": f["requests"],
                "bytes_sent": f["bytes_sent"],
                "first_complete": iso(f["first_complete_at"]),
                "last_fetch": iso(f["last_fetch_at"]),
            }
            for f in fetches
        ],
        "audit": [
            {
                "at": r["at"].isoformat(),
                "operator": r["operator_oin"],
                "action": r["action"],
                "recipient": r["recipient_oin"],
                "reason": r["reason"],
                "outcome": r["outcome"],
            }
            for r in audit
        ],
    }


@dataclass(frozen=True)
class Download:
    bestandsnaam: str
    mime_type: str
    size: int
    sha256: str
    chunks: AsyncIterator[bytes]
    #: called with the bytes sent once the response is written: a recipient's fetch of a
    #: document delivered by reference (Grote Berichten) is recorded (``gb_fetches``, 402)
    done: Callable[[int], Awaitable[None]] | None = None


async def document(ctx: Context, caller: Caller, kenmerk: UUID, seq: int) -> Download:
    """A document of the envelope, for its sender or a recipient (Grote Berichten too:
    streamed from the payload store, never whole in memory). A recipient's download of a
    document delivered by reference is a fetch like one from the Grote Berichten
    endpoint: recorded in ``gb_fetches`` and, the first complete one, as status 402; an
    expired reference answers 410 there and here."""
    a = await access(ctx, caller, kenmerk)
    if not (a.sender or a.recipient):
        raise not_found("document")
    row = await ctx.pool.fetchrow(
        "SELECT d.mime_type, d.bestandsnaam, d.size, d.sha256, d.data,"
        " r.expires_at < now() AS expired, r.kenmerk IS NOT NULL AS by_reference"
        " FROM documents d LEFT JOIN gb_references r ON r.kenmerk = d.kenmerk AND r.seq = d.seq"
        " WHERE d.kenmerk = $1 AND d.seq = $2",
        kenmerk,
        seq,
    )
    if row is None:
        raise not_found("document")
    fetch = a.recipient and bool(row["by_reference"])
    if fetch and row["expired"]:
        log.info("portal.reference_expired", kenmerk=str(kenmerk), seq=seq, recipient=caller.oin)
        raise Problem(410, "expired", "de verwijzing naar dit document is verlopen")
    data: bytes | None = row["data"]
    size = int(row["size"])
    if data is None and await ctx.store.size(row["sha256"]) is None:
        log.warning("portal.payload_missing", kenmerk=str(kenmerk), seq=seq)
        raise Problem(410, "gone", "dit document wordt niet meer bewaard")

    async def chunks() -> AsyncIterator[bytes]:
        if data is not None:
            yield data
        else:
            async for chunk in ctx.store.stream(row["sha256"], 0, size):
                yield chunk

    async def fetched(sent: int) -> None:
        await record_fetch(ctx.pool, kenmerk, seq, caller.oin, sent, sent == size)
        log.info("portal.fetch", kenmerk=str(kenmerk), seq=seq, recipient=caller.oin, bytes=sent)

    return Download(
        row["bestandsnaam"],
        row["mime_type"],
        size,
        row["sha256"],
        chunks(),
        fetched if fetch else None,
    )
