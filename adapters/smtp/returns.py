"""The ``smtpreturns`` component: a return mail per status change the sender subscribed to,
for envelopes submitted over SMTP, written into the sender's POP3 mailbox.

The trigger of migration 004 queues every status row of an SMTP envelope in
``smtp_return_queue`` within the status's own transaction; this component takes queued
rows (``FOR UPDATE SKIP LOCKED``, so several processes can run it), writes at most one
mailbox row per status (``pop3_mailbox`` is unique on ``(kenmerk, status_id)``: it is
partitioned by month on kenmerk, migration 017) and deletes the queue rows,
all in one transaction. Nothing is lost or duplicated across restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import asyncpg
import structlog

from adapters.smtp import metrics
from adapters.smtp.subject import format_subject
from digipoort.app import Gateway
from digipoort.config import Settings

log = structlog.get_logger(__name__)

__all__ = ["DEFAULT_CODES", "ReturnStatus", "process_batch", "render_return_mail", "start"]

#: each recipient's final outcome and every refusal or fault
DEFAULT_CODES = frozenset({"400", "410", "210", "220", "311", "321"})
POLL_SECONDS = 1.0
BATCH = 200


class ReturnStatus:
    """What a return mail is about (one status row and its envelope)."""

    def __init__(self, row: asyncpg.Record | dict[str, Any]) -> None:
        self.status_id: int = row["status_id"]
        self.kenmerk: uuid.UUID = row["kenmerk"]
        self.code: str = row["code"]
        self.tijdstempel: datetime = row["tijdstempel"]
        self.omschrijving: str = row["omschrijving"]
        self.recipient_oin: str | None = row["recipient_oin"]
        self.foutcode: str | None = row["foutcode"]
        self.foutbeschrijving: str | None = row["foutbeschrijving"]
        self.details: str | None = row["details"]
        self.sender_oin: str = row["sender_oin"]
        self.aanleverkenmerk: str | None = row["aanleverkenmerk"]
        self.berichtsoort: str = row["berichtsoort"]


# The subject has no white space to fold at: with the default 78 the email package would
# put the whole value on a continuation line ("Subject:" CRLF SP "[V=..."). RFC 5322
# allows lines up to 998 octets; the subject is at most ~110.
_POLICY = policy.SMTP.clone(max_line_length=998)


def render_return_mail(r: ReturnStatus, *, gateway_oin: str, domain: str) -> bytes:
    """The return mail (RFC 5322, CRLF): subject ``[V=<gateway>][A=<sender>][K=<ref>]``."""
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = f"digipoort@{domain}"
    msg["To"] = f"{r.sender_oin}@{domain}"
    msg["Subject"] = format_subject(gateway_oin, r.sender_oin, r.aanleverkenmerk)
    msg["Date"] = format_datetime(r.tijdstempel)
    msg["Message-ID"] = f"<status-{r.status_id}.{r.kenmerk}@{domain}>"
    msg["X-Digipoort-Kenmerk"] = str(r.kenmerk)
    msg["X-Digipoort-Statuscode"] = r.code
    lines = [
        f"Kenmerk: {r.kenmerk}",
        f"Berichtsoort: {r.berichtsoort}",
        f"Aanleverkenmerk: {r.aanleverkenmerk or ''}",
        f"Statuscode: {r.code}",
        f"Omschrijving: {r.omschrijving}",
        f"Tijdstempel: {r.tijdstempel.isoformat()}",
    ]
    if r.recipient_oin:
        lines.append(f"Ontvanger: {r.recipient_oin}")
    if r.foutcode:
        lines.append(f"Foutcode: {r.foutcode}")
    if r.foutbeschrijving:
        lines.append(f"Foutbeschrijving: {r.foutbeschrijving}")
    if r.details:
        lines += ["Details:", *r.details.splitlines()]
    msg.set_content("\n".join(lines) + "\n", charset="utf-8")
    return msg.as_bytes(policy=_POLICY)


_TAKE = """
SELECT q.status_id, s.kenmerk, s.code, s.tijdstempel, s.omschrijving, s.recipient_oin,
       s.foutcode, s.foutbeschrijving, s.details, e.sender_oin, e.aanleverkenmerk,
       e.berichtsoort, sub.codes
FROM smtp_return_queue q
LEFT JOIN statuses s ON s.id = q.status_id
LEFT JOIN envelopes e ON e.kenmerk = s.kenmerk
LEFT JOIN smtp_subscriptions sub ON sub.sender_oin = e.sender_oin
ORDER BY q.status_id
LIMIT $1
FOR UPDATE OF q SKIP LOCKED
"""

_INSERT = """
INSERT INTO pop3_mailbox (owner_oin, uid, status_id, kenmerk, message)
SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::uuid[], $5::bytea[])
ON CONFLICT (kenmerk, status_id) DO NOTHING
"""


def subscribed(code: str, codes: Iterable[str] | None) -> bool:
    return code in (DEFAULT_CODES if codes is None else set(codes))


async def process_batch(pool: asyncpg.Pool, settings: Settings, *, limit: int = BATCH) -> int:
    """Turn queued statuses into mailbox rows; returns how many queue rows were taken."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(_TAKE, limit)
        if not rows:
            return 0
        mails: list[tuple[str, str, int, uuid.UUID, bytes, str]] = []
        for row in rows:
            if row["sender_oin"] is None or not subscribed(row["code"], row["codes"]):
                continue
            status = ReturnStatus(row)
            mail = render_return_mail(
                status, gateway_oin=settings.gateway_oin, domain=settings.smtp.domain
            )
            mails.append(
                (
                    status.sender_oin,
                    uuid.uuid4().hex,
                    status.status_id,
                    status.kenmerk,
                    mail,
                    status.code,
                )
            )
        if mails:
            await conn.execute(_INSERT, *[list(col) for col in zip(*mails, strict=True)][:5])
        await conn.execute(
            "DELETE FROM smtp_return_queue WHERE status_id = ANY($1::bigint[])",
            [r["status_id"] for r in rows],
        )
    for m in mails:
        metrics.RETURN_MAILS.labels(m[5]).inc()
        log.info("smtp.return_mail", kenmerk=str(m[3]), sender_oin=m[0], code=m[5])
    return len(rows)


async def run(pool: asyncpg.Pool, settings: Settings, stopping: asyncio.Event) -> None:
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None

    def notified(*_: object) -> None:
        wake.set()

    try:
        while not stopping.is_set():
            if listener is None or listener.is_closed():
                with contextlib.suppress(Exception):
                    listener = await asyncpg.connect(settings.database.url)
                    await listener.add_listener("smtp_returns", notified)
            wake.clear()
            try:
                taken = await process_batch(pool, settings)
            except Exception as exc:
                log.warning("smtp.returns_failed", error=repr(exc))
                taken = 0
            if taken:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await wake.wait()
    finally:
        if listener is not None and not listener.is_closed():
            with contextlib.suppress(Exception):
                await listener.close()


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    assert gateway.pool is not None
    stopping = asyncio.Event()
    task = asyncio.get_running_loop().create_task(run(gateway.pool, gateway.settings, stopping))

    async def stop() -> None:
        stopping.set()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return stop
