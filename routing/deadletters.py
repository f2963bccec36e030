"""Dead letters: the sender's history learns about them, operators list, retry or discard.

* The ``deadletters`` component consumes ``digipoort.dead.history`` (a second queue on the
  ``digipoort.dead`` fanout, so every dead letter reaches it as well as the operators'
  ``digipoort.dead``) and records the stage's technical end status for the envelope:
  ``321``/``VAS400`` for the validate stage, ``410``/``AFS400`` for the route stage, with
  the reason in ``statusdetails``. Dead-lettered status reports (``statusreports``) are
  a recipient's problem, not the sender's: only logged and counted there.
* :func:`list_dead`, :func:`retry`, :func:`discard` are the operator's tools behind
  ``digipoort dead list|show|retry|discard``. Listing takes the messages without acking
  them and closes the channel, so all of them return to the queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import aio_pika
import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage

from digipoort import brokerconn, metrics
from digipoort.app import Gateway
from digipoort.broker import (
    DEAD_DELIVERIES,
    DEAD_QUEUE,
    DEAD_QUEUE_HEADER,
    DEAD_REASON,
    DEAD_STAGE,
    STATUS_QUEUE,
    STATUS_REPORTS,
    WORK_EXCHANGE,
    WORK_QUEUES,
    Broker,
)
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from digipoort.xmlsafe import XmlLimits, XmlRejected, parse
from routing.afleverrequest import NS

log = structlog.get_logger(__name__)

# stage → (status code, foutcode) recorded when an envelope is dead-lettered there
STAGE_STATUS: dict[str, tuple[str, str]] = {
    "validate": ("321", "VAS400"),
    "route": ("410", "AFS400"),
}
_QUEUE_STAGE = {queue: stage for stage, queue in WORK_QUEUES.items()}
_QUEUE_STAGE[STATUS_QUEUE] = STATUS_REPORTS
_MAX_LIST = 100_000
_RETRY_BACKOFF = 1.0
_XML_LIMITS = XmlLimits(max_bytes=2 * 1024 * 1024, max_depth=8, max_elements=64)


@dataclass(frozen=True)
class DeadLetter:
    """One message in ``digipoort.dead`` as an operator sees it."""

    kenmerk: str | None
    stage: str
    queue: str
    reason: str
    count: int
    body: bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "kenmerk": self.kenmerk,
            "stage": self.stage,
            "queue": self.queue,
            "reason": self.reason,
            "count": self.count,
        }


def describe(message: AbstractIncomingMessage) -> DeadLetter:
    """Pure: where a dead letter came from and why, from its headers and body.

    The stage comes from the ``x-death`` header's queue (dead-lettered by the broker) or
    from the ``x-digipoort-*`` headers (dead-lettered by a stage, with its reason)."""
    headers: dict[str, Any] = dict(message.headers or {})
    queue = str(headers.get(DEAD_QUEUE_HEADER) or "")
    reason = str(headers.get(DEAD_REASON) or "")
    count = headers.get(DEAD_DELIVERIES)
    deaths = headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        death = deaths[0]
        queue = queue or str(death.get("queue") or "")
        reason = reason or f"{death.get('reason', 'unknown')} (no reason recorded by a stage)"
        if count is None:
            count = death.get("count")
    stage = str(headers.get(DEAD_STAGE) or _QUEUE_STAGE.get(queue, queue or "unknown"))
    return DeadLetter(
        kenmerk=kenmerk_of(message.body, message.message_id),
        stage=stage,
        queue=queue,
        reason=reason or "unknown",
        count=count if isinstance(count, int) else 0,
        body=message.body,
    )


def kenmerk_of(body: bytes, message_id: str | None) -> str | None:
    """The kenmerk of a dead work item (JSON body) or status report (message_id)."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("kenmerk"), str):
            return str(UUID(data["kenmerk"]))
    except (ValueError, UnicodeDecodeError):
        pass
    if body.lstrip().startswith(b"<"):  # a status report (zetStatusRequest)
        try:
            found = parse(body, _XML_LIMITS).getroot().findtext(f"{{{NS}}}kenmerk")
        except XmlRejected:
            found = None
        if found:
            return found.strip()[:80]
    if message_id:
        try:
            return str(UUID(message_id))
        except ValueError:
            return message_id[:80]
    return None


def dead_status(letter: DeadLetter, *, final_note: str | None = None) -> Status | None:
    """The status that tells the sender an envelope was dead-lettered (None when the
    stage has no sender-visible status or the kenmerk is unknown)."""
    mapped = STAGE_STATUS.get(letter.stage)
    if mapped is None or letter.kenmerk is None:
        return None
    try:
        kenmerk = UUID(letter.kenmerk)
    except ValueError:
        return None
    code, foutcode = mapped
    text = final_note or (
        f"verwerking in stap {letter.stage} na {letter.count} pogingen gestaakt (dead letter)"
    )
    return Status(kenmerk, code, foutcode=foutcode, foutbeschrijving=text, details=letter.reason)


async def record_dead_statuses(pool: asyncpg.Pool, statuses: Iterable[Status]) -> int:
    """Write statuses for envelopes that exist (a dead work item may name no envelope).
    Idempotent: 321/410 are recorded at most once per kenmerk. The validate queue is
    served by the merged stage (validation and routing): an envelope that failed there
    after it was validated failed in routing, and gets 410 AFS400 instead of 321."""
    wanted = list(statuses)
    if not wanted:
        return 0
    async with pool.acquire() as conn:
        known = {
            r["kenmerk"]: r["stage"]
            for r in await conn.fetch(
                "SELECT kenmerk, stage FROM envelopes WHERE kenmerk = ANY($1::uuid[])",
                [s.kenmerk for s in wanted],
            )
        }
        chosen = [
            _routing_failure(s) if s.code == "321" and known[s.kenmerk] in _ROUTING else s
            for s in wanted
            if s.kenmerk in known
        ]
        await write_statuses(conn, chosen)
    return len(chosen)


_ROUTING = frozenset({"gevalideerd", "gerouteerd"})


def _routing_failure(s: Status) -> Status:
    code, foutcode = STAGE_STATUS["route"]
    return Status(
        s.kenmerk,
        code,
        foutcode=foutcode,
        foutbeschrijving=s.foutbeschrijving,
        details=s.details,
        tijdstempel=s.tijdstempel,
    )


class DeadLetterHistory:
    """Consumes ``digipoort.dead.history``: one status per dead-lettered envelope."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        letter = describe(message)
        bound = log.bind(kenmerk=letter.kenmerk, stage=letter.stage)
        status = dead_status(letter)
        try:
            written = await record_dead_statuses(self._pool, [status] if status else [])
        except Exception as exc:
            bound.warning("could not record dead-letter status; retried", error=repr(exc))
            await asyncio.sleep(_RETRY_BACKOFF)  # not a hot loop while the database is down
            await message.nack(requeue=True)
            return
        if written and status is not None:
            metrics.DEAD_LETTER_STATUSES.labels(letter.stage, status.code).inc()
            metrics.STATUSES.labels(status.code).inc()
            bound.error(
                "envelope dead-lettered; status recorded", code=status.code, reason=letter.reason
            )
        else:
            bound.error("message dead-lettered (no sender status)", reason=letter.reason)
        await message.ack()


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """The ``deadletters`` component."""
    assert gateway.pool is not None and gateway.broker is not None
    broker: Broker = gateway.broker
    channel = await broker.channel(prefetch=32)
    queue = await broker.declare_dead_history_queue(channel)
    handler = DeadLetterHistory(gateway.pool)
    tag = await queue.consume(handler.on_message)

    async def stop() -> None:
        try:  # bounded: during a broker outage nobody answers (SIGTERM must still stop)
            async with asyncio.timeout(5):
                await queue.cancel(tag)
                await channel.close()
        except Exception as exc:
            log.debug("deadletters stop", error=repr(exc))

    return stop


# -- operator tools ---------------------------------------------------------------------
async def _take_all(
    channel: aio_pika.abc.AbstractChannel,
) -> list[AbstractIncomingMessage]:
    queue = await channel.get_queue(DEAD_QUEUE, ensure=False)
    taken: list[AbstractIncomingMessage] = []
    while len(taken) < _MAX_LIST:
        message = await queue.get(no_ack=False, fail=False)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead(amqp_url: str | Sequence[str]) -> list[DeadLetter]:
    """Every message in ``digipoort.dead``; all stay in the queue."""
    connection = await brokerconn.connect_first(amqp_url)
    try:
        channel = await connection.channel()
        letters = [describe(m) for m in await _take_all(channel)]
        await channel.close()  # unacked: everything returns to the queue
        return letters
    finally:
        await connection.close()


async def _audit(
    pool: asyncpg.Pool, actor: str, action: str, letter: DeadLetter, reason: str
) -> None:
    await pool.execute(
        "INSERT INTO dead_letter_actions (actor, action, kenmerk, stage, reason)"
        " VALUES ($1, $2, $3, $4, $5)",
        actor,
        action,
        letter.kenmerk,
        letter.stage,
        reason,
    )


async def retry(
    amqp_url: str | Sequence[str], pool: asyncpg.Pool, kenmerken: set[str], *, actor: str
) -> list[DeadLetter]:
    """Re-publish the dead work items of ``kenmerken`` to their stage's work queue (via
    ``digipoort.work``, confirmed) and only then remove them from ``digipoort.dead``.
    Status reports cannot be retried (discard them). Returns those retried."""
    connection = await brokerconn.connect_first(amqp_url)
    done: list[DeadLetter] = []
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        work = await channel.get_exchange(WORK_EXCHANGE, ensure=False)
        for message in await _take_all(channel):
            letter = describe(message)
            if letter.kenmerk not in kenmerken or letter.stage not in WORK_QUEUES:
                continue
            body = json.dumps({"kenmerk": letter.kenmerk}).encode()
            await work.publish(
                aio_pika.Message(
                    body,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=letter.kenmerk,
                    content_type="application/json",
                ),
                routing_key=letter.stage,
                mandatory=True,
            )
            await _audit(pool, actor, "retry", letter, letter.reason)
            await message.ack()
            metrics.DEAD_LETTER_ACTIONS.labels("retry", letter.stage).inc()
            log.info("dead letter retried", kenmerk=letter.kenmerk, stage=letter.stage)
            done.append(letter)
        await channel.close()
    finally:
        await connection.close()
    return done


async def discard(
    amqp_url: str | Sequence[str],
    pool: asyncpg.Pool,
    kenmerken: set[str],
    *,
    actor: str,
    reason: str,
) -> list[DeadLetter]:
    """Record the final status (if not yet there) and an audit row, then remove the
    dead letters of ``kenmerken`` from ``digipoort.dead``."""
    connection = await brokerconn.connect_first(amqp_url)
    done: list[DeadLetter] = []
    try:
        channel = await connection.channel()
        for message in await _take_all(channel):
            letter = describe(message)
            if letter.kenmerk not in kenmerken:
                continue
            status = dead_status(
                letter, final_note=f"door beheer afgevoerd na dead letter: {reason}"
            )
            await record_dead_statuses(pool, [status] if status else [])
            await _audit(pool, actor, "discard", letter, reason)
            await message.ack()
            metrics.DEAD_LETTER_ACTIONS.labels("discard", letter.stage).inc()
            log.warning(
                "dead letter discarded", kenmerk=letter.kenmerk, stage=letter.stage, reason=reason
            )
            done.append(letter)
        await channel.close()
    finally:
        await connection.close()
    return done
