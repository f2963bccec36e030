"""The routing stage: recipients, meervoudig doorzenden, and hand-off to recipient queues.

For each validated envelope: recipients = identiteitOntvanger (when given) or the
berichtsoort's recipients, plus the copy recipients the flow owner configured. One
delivery row per (kenmerk, recipient) — the primary key makes a second one impossible —
and status 405 per recipient, committed together. Then the ``afleverRequest`` is
published to ``digipoort.aflever.<OIN>`` with a confirm, and 400 is recorded per
recipient. A redelivered work item re-publishes only deliveries still ``pending``;
recipients of an envelope, once routed, never change.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog

from digipoort import metrics
from digipoort.broker import Broker
from digipoort.config import GroteBerichtenConfig
from digipoort.envelope import EnvelopeRecord
from digipoort.envelopestore import fetch_envelopes, set_stage
from digipoort.payloads import PayloadStore
from digipoort.registry_store import RegistryHolder
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from routing.aflever_body import aflever_body

log = structlog.get_logger(__name__)

ROUTED = "gerouteerd"


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

    async def handle(self, kenmerken: list[UUID]) -> None:
        records = await fetch_envelopes(self._pool, kenmerken)
        registry = self._registry.current
        new_rows: list[tuple[UUID, str, str]] = []
        statuses: list[Status] = []
        stages: dict[UUID, str] = {}
        for kenmerk in dict.fromkeys(kenmerken):
            record = records.get(kenmerk)
            if record is None:
                raise LookupError(f"envelope {kenmerk} not found")
            if record.stage == "gevalideerd":
                for oin in registry.recipients_for(record.berichtsoort, record.ontvanger_oin):
                    participant = registry.participants.get(oin)
                    channel = participant.aflever.kind if participant else "queue"
                    new_rows.append((kenmerk, oin, channel))
                    statuses.append(Status(kenmerk, "405", recipient_oin=oin))
                stages[kenmerk] = ROUTED
            elif record.stage != ROUTED:
                log.warning(
                    "routing skipped: envelope not validated",
                    kenmerk=str(kenmerk),
                    stage=record.stage,
                )
        async with self._pool.acquire() as conn:
            if stages:
                async with conn.transaction():
                    await conn.executemany(
                        "INSERT INTO deliveries (kenmerk, recipient_oin, channel)"
                        " VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        new_rows,
                    )
                    await write_statuses(conn, statuses)
                    await set_stage(conn, stages)
                metrics.STATUSES.labels("405").inc(len(statuses))
            pending = await conn.fetch(
                "SELECT kenmerk, recipient_oin FROM deliveries WHERE kenmerk = ANY($1::uuid[])"
                " AND state = 'pending' AND channel = 'queue'",
                list(records),
            )
        await self._deliver_to_queues(
            records, [(r["kenmerk"], r["recipient_oin"]) for r in pending]
        )

    async def _deliver_to_queues(
        self, records: dict[UUID, EnvelopeRecord], pending: list[tuple[UUID, str]]
    ) -> None:
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
        statuses = [Status(k, "400", recipient_oin=oin) for k, oin in done]
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE deliveries d SET state = 'queued', attempts = attempts + 1,"
                " updated_at = now() FROM unnest($1::uuid[], $2::text[]) AS x(kenmerk, oin)"
                " WHERE d.kenmerk = x.kenmerk AND d.recipient_oin = x.oin",
                [k for k, _ in done],
                [o for _, o in done],
            )
            await write_statuses(conn, statuses)
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
