"""The routing stage: recipients, meervoudig doorzenden, and hand-off to recipient queues.

For each validated envelope: recipients = identiteitOntvanger (when given) or the
berichtsoort's recipients, plus the copy recipients the flow owner configured. One
delivery row per (kenmerk, recipient) — the primary key makes a second one impossible —
and status 405 per recipient, committed together. Then the ``afleverRequest`` is
published to ``digipoort.aflever.<OIN>`` with a confirm, and 400 is recorded per
recipient. A redelivered work item re-publishes only deliveries still ``pending``;
recipients of an envelope, once routed, never change.

Since issue 15 the validation stage routes what it validated itself (one consumer, one
statement for validation and routing, :meth:`RoutingStage.route`); :meth:`RoutingStage.handle`
serves the former ``digipoort.route`` queue (work items of an older version).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog

from digipoort import metrics
from digipoort.broker import Broker
from digipoort.config import GroteBerichtenConfig
from digipoort.envelope import EnvelopeRecord, StoredDocument
from digipoort.envelopestore import _record
from digipoort.payloads import PayloadStore
from digipoort.registry import Registry
from digipoort.registry_store import RegistryHolder
from digipoort.status import Status
from digipoort.statusstore import write_stage_batch
from routing.aflever_body import aflever_body

log = structlog.get_logger(__name__)

ROUTED = "gerouteerd"
VALIDATED = "gevalideerd"


_FETCH = """
SELECT e.*, ARRAY(SELECT ROW(d.seq, d.mime_type, d.bestandsnaam, d.size, d.sha256, d.data)
                  FROM documents d WHERE d.kenmerk = e.kenmerk ORDER BY d.seq) AS docs
FROM envelopes e WHERE e.kenmerk = ANY($1::uuid[])
"""


async def fetch_for_stage(
    conn: asyncpg.Connection | asyncpg.Pool, kenmerken: Sequence[UUID]
) -> dict[UUID, EnvelopeRecord]:
    """The envelopes of a batch with their documents in one round trip."""
    records: dict[UUID, EnvelopeRecord] = {}
    for r in await conn.fetch(_FETCH, list(kenmerken)):
        record = _record(r)
        for seq, mime_type, bestandsnaam, size, sha256, data in r["docs"]:
            record.documents.append(
                StoredDocument(
                    seq=seq,
                    mime_type=mime_type,
                    bestandsnaam=bestandsnaam,
                    size=size,
                    sha256=sha256,
                    data=data,
                )
            )
        records[record.kenmerk] = record
    return records


@dataclass
class RoutePlan:
    """What routing a batch writes in the stage's transaction: one delivery row and one
    405 per (kenmerk, recipient), the envelopes' new stage, and the deliveries to publish
    to recipient queues afterwards."""

    rows: list[tuple[UUID, str, str]] = field(default_factory=list)
    statuses: list[Status] = field(default_factory=list)
    stages: dict[UUID, str] = field(default_factory=dict)
    publish: list[tuple[UUID, str]] = field(default_factory=list)  # (kenmerk, recipient)
    #: envelopes routed before (a redelivery): their pending deliveries are looked up
    routed_before: list[UUID] = field(default_factory=list)


class RoutingStage:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        store: PayloadStore,
        registry: RegistryHolder,
        *,
        grote_berichten: GroteBerichtenConfig | None = None,
        public_url: str = "https://localhost:8443",
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._store = store
        self._registry = registry
        self._gb = grote_berichten or GroteBerichtenConfig()
        self._public_url = public_url.rstrip("/")

    def route(self, record: EnvelopeRecord, registry: Registry, plan: RoutePlan) -> None:
        """Add the routing of a validated envelope to ``plan``."""
        kenmerk = record.kenmerk
        for oin in registry.recipients_for(record.berichtsoort, record.ontvanger_oin):
            participant = registry.participants.get(oin)
            channel = participant.aflever.kind if participant else "queue"
            plan.rows.append((kenmerk, oin, channel))
            plan.statuses.append(Status(kenmerk, "405", recipient_oin=oin))
            if channel == "queue":
                plan.publish.append((kenmerk, oin))
        plan.stages[kenmerk] = ROUTED

    def plan(self, record: EnvelopeRecord, registry: Registry, plan: RoutePlan) -> None:
        """Add the routing of one envelope (validated, or routed before) to ``plan``."""
        kenmerk = record.kenmerk
        if record.stage == VALIDATED:
            self.route(record, registry, plan)
        elif record.stage == ROUTED:
            plan.routed_before.append(kenmerk)
        else:
            log.warning(
                "routing skipped: envelope not validated",
                kenmerk=str(kenmerk),
                stage=record.stage,
            )

    async def pending_of(self, conn: asyncpg.Connection | asyncpg.Pool, plan: RoutePlan) -> None:
        """Redelivered work items: re-publish only the deliveries still ``pending``."""
        if not plan.routed_before:
            return
        pending = await conn.fetch(
            "SELECT kenmerk, recipient_oin FROM deliveries WHERE kenmerk = ANY($1::uuid[])"
            " AND state = 'pending' AND channel = 'queue'",
            plan.routed_before,
        )
        plan.publish.extend((r["kenmerk"], r["recipient_oin"]) for r in pending)

    async def handle(self, kenmerken: list[UUID]) -> None:
        """The ``digipoort.route`` queue: envelopes validated by a separate validation
        stage (before the stages were merged, or during a rolling upgrade)."""
        records = await fetch_for_stage(self._pool, kenmerken)
        registry = self._registry.current
        plan = RoutePlan()
        for kenmerk in dict.fromkeys(kenmerken):
            record = records.get(kenmerk)
            if record is None:
                raise LookupError(f"envelope {kenmerk} not found")
            self.plan(record, registry, plan)
        if plan.stages:
            await write_stage_batch(
                self._pool, plan.statuses, stages=plan.stages, deliveries=plan.rows
            )
            metrics.STATUSES.labels("405").inc(len(plan.statuses))
        await self.pending_of(self._pool, plan)
        await self.deliver(records, plan.publish)

    async def deliver(
        self, records: dict[UUID, EnvelopeRecord], pending: list[tuple[UUID, str]]
    ) -> None:
        """Publish the afleverRequests (confirms awaited together), then record ``queued``
        and status 400 per confirmed delivery in one statement; raises when any publish
        was not confirmed (the work item is then retried: only what is still pending is
        published again)."""
        if not pending:
            return
        await self._broker.ensure_aflever_queues({oin for _, oin in pending})
        bodies: dict[UUID, bytes] = {}
        for kenmerk, _ in pending:
            if kenmerk not in bodies:
                bodies[kenmerk] = await self._body(records[kenmerk])
        results = await asyncio.gather(
            *(
                self._broker.publish_aflever(oin, k, records[k].berichtsoort, bodies[k])
                for k, oin in pending
            ),
            return_exceptions=True,
        )
        done = [p for p, r in zip(pending, results, strict=True) if r is None]
        await write_stage_batch(
            self._pool, [Status(k, "400", recipient_oin=oin) for k, oin in done], queued=done
        )
        now = datetime.now(UTC)
        for k, oin in done:
            metrics.DELIVERIES.labels(oin, "queue", "delivered").inc()
            metrics.MESSAGES_METERED.labels(oin, "afgeleverd").inc()
            metrics.END_TO_END.observe((now - records[k].tijdstempel_aangeleverd).total_seconds())
        metrics.STATUSES.labels("400").inc(len(done))
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            for (k, oin), r in zip(pending, results, strict=True):
                if isinstance(r, BaseException):
                    metrics.DELIVERIES.labels(oin, "queue", "failed").inc()
                    log.warning(
                        "publish to recipient queue failed",
                        kenmerk=str(k),
                        recipient=oin,
                        error=repr(r),
                    )
            raise RuntimeError(f"{len(failed)} deliveries not confirmed") from failed[0]

    async def _body(self, record: EnvelopeRecord) -> bytes:
        """The afleverRequest: small documents inline, large ones as a Grote Berichten
        reference (shared with the deliverer and the Ophaalservice)."""
        return await aflever_body(
            self._pool,
            self._store,
            record,
            grote_berichten=self._gb,
            public_url=self._public_url,
        )
