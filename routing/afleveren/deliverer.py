"""The delivery stage for push recipients: durable retries, backoff, circuit breaker.

Deliveries of a push channel (created by the router with status 405) are handed to the
:class:`~routing.afleveren.channel.Channel` of their channel: ``wus`` to the WUS
AfleverService client (``routing/afleveren/wus.py``), ``smtp`` to the SMTP relay
(``routing/afleveren/smtp.py``). Schedule, statuses and breaker are the same for every
channel; a channel only moves bytes: it returns the archived receipt, or raises
:class:`DeliveryFailed` (retried) or :class:`DeliveryRefused` (permanent: 410 at once).
The schedule lives in ``deliveries`` (``attempts``, ``next_attempt_at``,
``last_error``), so a restarted gateway resumes it where it stood:

* a claim takes due rows with ``FOR UPDATE SKIP LOCKED`` (several processes can run the
  ``deliverer``), counts the attempt and leases the row (``next_attempt_at`` moves past
  the attempt's timeout: a process that dies mid-attempt leaves a row that becomes due
  again — at-least-once; the afleverRequest carries the kenmerk so the recipient dedupes);
* success: ``state = 'delivered'`` and 400, in one transaction; there is one row per
  (kenmerk, recipient), so the gateway never creates a second delivery;
* failure (fault, bad answer, connection, SMTP 4xx): 420 with the reason in ``statusdetails`` per
  attempt, the next attempt after an exponential, fully jittered, capped delay; once the
  recipient's retry window (``aflever.retry_for_hours`` of the participant, default
  ``settings.aflever.retry_for_hours``) has passed: 410 ``AFS600``, ``state = 'failed'``;
* a permanent refusal (:class:`DeliveryRefused`, e.g. an SMTP 5xx reply): 420 and 410 with
  the refusal's foutcode (``AFS620``) at once, ``state = 'failed'``;
* a circuit breaker per endpoint (recipient OIN), in memory per process, stops attempts
  to a recipient after ``breaker_failures`` consecutive failures for
  ``breaker_reset_seconds``, then lets one trial through. Each opening is recorded in
  ``circuit_breakers`` (removed when it closes or the deliverer stops), so the operator
  console of another process shows the real state (:func:`open_breakers`).

The loop wakes on ``LISTEN digipoort_deliveries`` (a trigger on new push deliveries), at
the next due time, when an open circuit breaker turns half-open, and otherwise only after
:data:`IDLE_WAKE_SECONDS` (``poll_interval`` seconds while LISTEN is unavailable): an
idle deliverer does not poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import structlog

from digipoort import db, metrics
from digipoort.config import Settings
from digipoort.envelopestore import fetch_envelopes
from digipoort.payloads import PayloadStore
from digipoort.registry import Participant
from digipoort.registry_store import RegistryHolder
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from routing import delivery_metrics
from routing.aflever_body import recipient_documents
from routing.afleveren.channel import (
    FOUTCODE_REFUSED,
    Channel,
    DeliveryFailed,
    DeliveryRefused,
    Outgoing,
    Receipt,
)
from routing.afleveren.schedule import BreakerState, CircuitBreaker, Decision, after_failure

__all__ = [
    "FOUTCODE_GAVE_UP",
    "FOUTCODE_NO_ENDPOINT",
    "FOUTCODE_REFUSED",
    "FOUTCODE_RETRY",
    "NOTIFY_CHANNEL",
    "PUSH_CHANNELS",
    "Channel",
    "Deliverer",
    "DeliveryFailed",
    "DeliveryRefused",
    "Outgoing",
    "Receipt",
    "Sender",
    "open_breakers",
]

log = structlog.get_logger(__name__)

#: with LISTEN working, the longest an idle deliverer sleeps (a safety net: every new
#: push delivery notifies, due times and breaker trials are computed)
IDLE_WAKE_SECONDS = 30.0

#: The push channels (``deliveries.channel`` = the recipient's ``aflever.kind``).
PUSH_CHANNELS = ("wus", "smtp")
NOTIFY_CHANNEL = "digipoort_deliveries"
FOUTCODE_RETRY = "AFS400"
FOUTCODE_GAVE_UP = "AFS600"
FOUTCODE_NO_ENDPOINT = "AFS610"


Sender = Callable[[Outgoing], Awaitable[object]]
"""Deliver one envelope over one channel (a :class:`Channel`'s bound ``deliver``); raise
:class:`DeliveryFailed` (retried) or :class:`DeliveryRefused` (permanent)."""

@dataclass(frozen=True)
class Claim:
    kenmerk: UUID
    recipient: str
    channel: str
    attempts: int
    created_at: datetime
    previous_due: datetime | None


_CLAIM = """
WITH due AS (
    SELECT kenmerk, recipient_oin, next_attempt_at FROM deliveries
    WHERE channel = ANY($5::text[]) AND state = 'pending'
      AND coalesce(next_attempt_at, created_at) <= now()
      AND ($1::text IS NULL OR recipient_oin = $1)
      AND NOT (recipient_oin = ANY($2::text[]))
    ORDER BY coalesce(next_attempt_at, created_at)
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d SET attempts = d.attempts + 1, updated_at = now(),
    next_attempt_at = now() + make_interval(secs => $4)
FROM due WHERE d.kenmerk = due.kenmerk AND d.recipient_oin = due.recipient_oin
RETURNING d.kenmerk, d.recipient_oin, d.channel, d.attempts, d.created_at,
    due.next_attempt_at AS previous
"""


class Deliverer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: PayloadStore,
        registry: RegistryHolder,
        senders: Mapping[str, Sender],
        settings: Settings,
        *,
        poll_interval: float = 1.0,
        batch: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._registry = registry
        unknown = set(senders) - set(PUSH_CHANNELS)
        if unknown:
            raise ValueError(f"no push channel: {sorted(unknown)}")
        self._senders = dict(senders)
        self._channels = sorted(senders)
        self._settings = settings
        self._cfg = settings.aflever
        self._poll = poll_interval
        self._batch = batch
        self._rng = rng or random.Random()
        self._lease = self._cfg.timeout_seconds + 30.0
        self._breakers: dict[str, CircuitBreaker] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._listener: asyncpg.Connection | None = None
        #: this deliverer in ``circuit_breakers`` (several processes may deliver)
        self.instance = f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        try:
            self._listener = await db.connect(self._settings.database.url)
            await self._listener.add_listener(NOTIFY_CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError) as exc:  # polling still works
            log.warning("deliverer: LISTEN unavailable, polling only", error=repr(exc))
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop claiming; the attempts under way finish (their outcome is recorded)."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(Exception):  # its breakers end with it
            await self._pool.execute(
                "DELETE FROM circuit_breakers WHERE deliverer = $1", self.instance
            )
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                handled = await self.run_once()
                if handled:
                    continue
                timeout = await self._until_next_due()
            except Exception as exc:  # database trouble: try again after a poll
                log.warning("deliverer: round failed", error=repr(exc))
                timeout = self._poll
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _until_breaker(self, now: datetime) -> float | None:
        times = [t for b in self._breakers.values() if (t := b.half_open_at()) is not None]
        return (min(times) - now).total_seconds() if times else None

    async def _until_next_due(self) -> float:
        due: datetime | None = await self._pool.fetchval(
            "SELECT min(coalesce(next_attempt_at, created_at)) FROM deliveries"
            " WHERE channel = ANY($2::text[]) AND state = 'pending'"
            " AND NOT (recipient_oin = ANY($1::text[]))",
            self._blocked(_now()),
            self._channels,
        )
        now = _now()
        limit = self._poll if self._listener is None else max(self._poll, IDLE_WAKE_SECONDS)
        candidates = [limit]
        if due is not None:
            candidates.append((due - now).total_seconds())
        if (breaker := self._until_breaker(now)) is not None:
            candidates.append(breaker)
        return max(0.01, min(candidates))

    # ------------------------------------------------------------------ one round

    def _breaker(self, oin: str) -> CircuitBreaker:
        if oin not in self._breakers:
            self._breakers[oin] = CircuitBreaker(
                self._cfg.breaker_failures, self._cfg.breaker_reset_seconds
            )
        return self._breakers[oin]

    def _blocked(self, now: datetime) -> list[str]:
        return [o for o, b in self._breakers.items() if b.state(now) != BreakerState.CLOSED]

    async def run_once(self) -> int:
        """Claim and attempt the due deliveries; returns how many were attempted."""
        now = _now()
        claims = await self._claim(None, self._blocked(now), self._batch)
        for oin, breaker in self._breakers.items():
            if breaker.state(now) == BreakerState.HALF_OPEN:
                trial = await self._claim(oin, [], 1)
                if trial:
                    breaker.begin_trial()
                    claims += trial
        by_recipient: dict[str, list[Claim]] = defaultdict(list)
        for c in claims:
            by_recipient[c.recipient].append(c)
        await asyncio.gather(*(self._recipient(oin, cs) for oin, cs in by_recipient.items()))
        return len(claims)

    async def _claim(self, oin: str | None, blocked: list[str], limit: int) -> list[Claim]:
        rows = await self._pool.fetch(_CLAIM, oin, blocked, limit, self._lease, self._channels)
        return [
            Claim(
                r["kenmerk"],
                r["recipient_oin"],
                r["channel"],
                r["attempts"],
                r["created_at"],
                r["previous"],
            )
            for r in rows
        ]

    async def _recipient(self, oin: str, claims: list[Claim]) -> None:
        """Attempts to one recipient run one after the other, so its breaker can stop them."""
        breaker = self._breaker(oin)
        for i, claim in enumerate(claims):
            if i and breaker.state(_now()) != BreakerState.CLOSED:
                await self._release(claims[i:])
                return
            await self._attempt(claim, breaker)

    async def _release(self, claims: list[Claim]) -> None:
        """Give back claimed rows not attempted (the breaker opened): as they were."""
        await self._pool.executemany(
            "UPDATE deliveries SET attempts = attempts - 1, next_attempt_at = $3"
            " WHERE kenmerk = $1 AND recipient_oin = $2 AND state = 'pending'",
            [(c.kenmerk, c.recipient, c.previous_due) for c in claims],
        )

    async def _attempt(self, claim: Claim, breaker: CircuitBreaker) -> None:
        bound = log.bind(
            kenmerk=str(claim.kenmerk), recipient=claim.recipient, channel=claim.channel
        )
        participant = self._registry.current.participants.get(claim.recipient)
        try:
            if participant is None or participant.aflever.kind != claim.channel:
                raise DeliveryFailed(
                    f"geen {claim.channel}-aflevering meer geregistreerd voor de ontvanger"
                )
            if not participant.aflever.url:
                raise DeliveryFailed("geen URL van het afleverpunt geregistreerd")
            records = await fetch_envelopes(self._pool, [claim.kenmerk])
            record = records[claim.kenmerk]
            documents = await recipient_documents(
                self._pool,
                self._store,
                record,
                grote_berichten=self._settings.grote_berichten,
                public_url=self._settings.wus.public_url,
            )
            send = self._senders[claim.channel]
            await send(Outgoing(participant, record, documents, claim.attempts))
        except DeliveryRefused as exc:
            await self._failed(claim, participant, exc.reason, breaker, bound, refused=exc)
        except DeliveryFailed as exc:
            await self._failed(claim, participant, exc.reason, breaker, bound)
        except Exception as exc:
            await self._failed(
                claim, participant, f"interne fout: {type(exc).__name__}", breaker, bound
            )
            bound.warning("deliverer: attempt crashed", error=repr(exc))
        else:
            await self._delivered(claim, breaker, bound)

    async def _delivered(
        self, claim: Claim, breaker: CircuitBreaker, bound: structlog.BoundLogger
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                "UPDATE deliveries SET state = 'delivered', delivered_at = now(),"
                " next_attempt_at = NULL, last_error = NULL, updated_at = now()"
                " WHERE kenmerk = $1 AND recipient_oin = $2 AND state = 'pending'"
                " RETURNING 1",
                claim.kenmerk,
                claim.recipient,
            )
            if updated:
                await write_statuses(
                    conn, [Status(claim.kenmerk, "400", recipient_oin=claim.recipient)]
                )
        if breaker.state(_now()) != BreakerState.CLOSED:
            await self._breaker_closed(claim.recipient)
        breaker.success()
        delivery_metrics.CIRCUIT_OPEN.labels(claim.recipient).set(0)
        delivery_metrics.ATTEMPTS.labels(claim.recipient, "delivered").inc()
        metrics.DELIVERIES.labels(claim.recipient, claim.channel, "delivered").inc()
        metrics.MESSAGES_METERED.labels(claim.recipient, "afgeleverd").inc()
        metrics.STATUSES.labels("400").inc()
        bound.info("deliverer: delivered", attempts=claim.attempts)

    async def _failed(
        self,
        claim: Claim,
        participant: Participant | None,
        reason: str,
        breaker: CircuitBreaker,
        bound: structlog.BoundLogger,
        *,
        refused: DeliveryRefused | None = None,
    ) -> None:
        now = _now()
        hours = participant.aflever.retry_for_hours if participant else None
        retry_for = timedelta(hours=hours if hours is not None else self._cfg.retry_for_hours)
        decision = (
            Decision(None)
            if refused is not None
            else after_failure(
                now=now,
                created_at=claim.created_at,
                attempts=claim.attempts,
                retry_for=retry_for,
                base=self._cfg.base_delay_seconds,
                cap=self._cfg.max_delay_seconds,
                rng=self._rng,
            )
        )
        statuses = [
            Status(
                claim.kenmerk,
                "420",
                recipient_oin=claim.recipient,
                foutcode=FOUTCODE_RETRY,
                foutbeschrijving="Afleverpoging mislukt",
                details=f"poging {claim.attempts}: {reason}",
            )
        ]
        if refused is not None:
            statuses.append(
                Status(
                    claim.kenmerk,
                    "410",
                    recipient_oin=claim.recipient,
                    foutcode=refused.foutcode,
                    foutbeschrijving="Aflevering geweigerd door de ontvanger",
                    details=f"poging {claim.attempts}: {reason}",
                )
            )
        elif decision.retry_at is None:
            statuses.append(
                Status(
                    claim.kenmerk,
                    "410",
                    recipient_oin=claim.recipient,
                    foutcode=FOUTCODE_GAVE_UP,
                    foutbeschrijving="Maximaal aantal afleverpogingen bereikt",
                    details=f"na {claim.attempts} pogingen; laatste fout: {reason}",
                )
            )
        async with self._pool.acquire() as conn, conn.transaction():
            updated = await conn.fetchval(
                "UPDATE deliveries SET last_error = $3, updated_at = now(),"
                " state = CASE WHEN $4::timestamptz IS NULL THEN 'failed' ELSE state END,"
                " next_attempt_at = $4"
                " WHERE kenmerk = $1 AND recipient_oin = $2 AND state = 'pending' RETURNING 1",
                claim.kenmerk,
                claim.recipient,
                reason,
                decision.retry_at,
            )
            if updated:
                await write_statuses(conn, statuses)
        was_closed = breaker.state(now) == BreakerState.CLOSED
        if refused is not None:  # the endpoint is up and answered: not a breaker failure
            if not was_closed:
                await self._breaker_closed(claim.recipient)
            breaker.success()
            delivery_metrics.CIRCUIT_OPEN.labels(claim.recipient).set(0)
        else:
            breaker.failure(now)
        if breaker.state(now) != BreakerState.CLOSED:
            # opened, or opened again after a failed trial (while open, only trials run)
            await self._breaker_opened(claim.recipient, reason)
            delivery_metrics.CIRCUIT_OPEN.labels(claim.recipient).set(1)
            if was_closed:
                bound.warning("deliverer: circuit breaker opened")
        for s in statuses:
            metrics.STATUSES.labels(s.code).inc()
        if refused is not None:
            delivery_metrics.ATTEMPTS.labels(claim.recipient, "refused").inc()
            metrics.DELIVERIES.labels(claim.recipient, claim.channel, "failed").inc()
            bound.warning("deliverer: refused permanently", attempts=claim.attempts, reason=reason)
        elif decision.retry_at is None:
            delivery_metrics.ATTEMPTS.labels(claim.recipient, "gave_up").inc()
            metrics.DELIVERIES.labels(claim.recipient, claim.channel, "failed").inc()
            bound.warning("deliverer: gave up", attempts=claim.attempts, reason=reason)
        else:
            delivery_metrics.ATTEMPTS.labels(claim.recipient, "failed").inc()
            delivery_metrics.RETRIES.labels(claim.recipient).inc()
            bound.info(
                "deliverer: attempt failed; retry scheduled",
                attempts=claim.attempts,
                reason=reason,
                retry_at=decision.retry_at.isoformat(),
            )

    # ------------------------------------------------------------------ breaker record

    async def _breaker_opened(self, oin: str, reason: str) -> None:
        """Record an opening (the database's clock, the one the console compares with)."""
        try:
            await self._pool.execute(
                "INSERT INTO circuit_breakers (recipient_oin, deliverer, opened_at,"
                " reset_seconds, last_error) VALUES ($1, $2, now(), $3, $4)"
                " ON CONFLICT (recipient_oin, deliverer) DO UPDATE SET"
                " opened_at = now(), reset_seconds = $3, last_error = $4",
                oin,
                self.instance,
                self._cfg.breaker_reset_seconds,
                reason[:500],
            )
        except (OSError, asyncpg.PostgresError) as exc:  # the breaker itself still works
            log.warning("deliverer: breaker state not recorded", recipient=oin, error=repr(exc))

    async def _breaker_closed(self, oin: str) -> None:
        try:
            await self._pool.execute(
                "DELETE FROM circuit_breakers WHERE recipient_oin = $1 AND deliverer = $2",
                oin,
                self.instance,
            )
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("deliverer: breaker state not recorded", recipient=oin, error=repr(exc))


async def open_breakers(conn: asyncpg.Pool | asyncpg.Connection) -> dict[str, str]:
    """The breakers that are not closed, per recipient, as the deliverers recorded them:
    ``open``, or ``half_open`` once ``reset_seconds`` have passed (the next attempt is a
    trial). Where several deliverer processes hold a breaker for one recipient, any open
    one shows as open."""
    rows = await conn.fetch(
        "SELECT recipient_oin, bool_or(now() < opened_at + make_interval(secs => reset_seconds))"
        " AS open FROM circuit_breakers GROUP BY recipient_oin"
    )
    return {r["recipient_oin"]: "open" if r["open"] else "half_open" for r in rows}


def _now() -> datetime:
    return datetime.now(UTC)
