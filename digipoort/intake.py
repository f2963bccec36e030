"""Intake: the one function every koppelvlak calls to hand over a submission.

Durable accept (invariant 1): documents stored, envelope row and statuses 105/100/110
committed, work item published to RabbitMQ with a publisher confirm — then the kenmerk is
returned. Concurrent submissions are group-committed: a few writer tasks each take every
submission waiting and commit them in one transaction, then publish them concurrently, so
throughput grows with load while an idle gateway answers a lone submission at once.

If the publish is not confirmed after the commit, the kenmerk is still returned: the
envelope is committed and the sweeper (:mod:`digipoort.sweeper`) republishes every
envelope whose hand-off was not confirmed.

A resubmission (same sender, berichtsoort, aanleverkenmerk and documents within
``intake.resubmission_window_seconds``) gets the original kenmerk and tijdstempel back
and creates nothing (:mod:`digipoort.resubmission`); the check is one statement inside
the same group-commit transaction.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import structlog

from digipoort import metrics, resubmission
from digipoort.broker import VALIDATE, Broker
from digipoort.config import LimitsConfig, StorageConfig
from digipoort.envelope import (
    Aanlevering,
    Accepted,
    Document,
    StoredDocument,
    new_kenmerk,
    sha256_hex,
)
from digipoort.envelopestore import NewEnvelope, insert_envelopes, mark_handed_off
from digipoort.payloads import PayloadStore
from digipoort.registry_store import RegistryHolder
from digipoort.status import Status, now
from digipoort.statusstore import write_statuses

log = structlog.get_logger(__name__)


class IntakeRefused(Exception):
    """A submission refused before a kenmerk was given. ``reden`` is a stable machine
    reason (a :class:`digipoort.registry.Weigering` value or one of the limits below);
    adapters map it to their protocol's error (ALS code, SMTP reply, FTP reply)."""

    TE_GROOT = "te_groot"
    TE_VEEL_BIJLAGEN = "te_veel_bijlagen"

    def __init__(self, reden: str, melding: str) -> None:
        super().__init__(melding)
        self.reden = reden
        self.melding = melding


class IntakeUnavailable(Exception):
    """A technical failure before the envelope was committed: nothing was accepted."""


@dataclass
class _Pending:
    envelope: NewEnvelope
    sleutel: bytes | None = None
    # set by the writer: the original this submission repeats (no envelope was created)
    original: resubmission.Original | None = None
    future: asyncio.Future[Accepted] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Intake:
    def __init__(
        self,
        pool: asyncpg.Pool,
        broker: Broker,
        store: PayloadStore,
        registry: RegistryHolder,
        *,
        limits: LimitsConfig,
        storage: StorageConfig,
        max_batch: int = 256,
        writers: int = 4,
        resubmission_window_seconds: float = 24 * 3600.0,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._store = store
        self._registry = registry
        self._limits = limits
        self._storage = storage
        self._max_batch = max_batch
        self._window = resubmission_window_seconds
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()) for _ in range(self._writers)]

    async def stop(self) -> None:
        """Finish what was handed in, then stop the writers."""
        await self._queue.join()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def precheck(self, a: Aanlevering) -> None:
        """The synchronous checks: registry rules and size limits. Raises IntakeRefused."""
        registry = self._registry.current
        fout = registry.authorise(
            sender_oin=a.sender_oin,
            berichtsoort=a.berichtsoort,
            koppelvlak=a.koppelvlak,
            ontvanger_oin=a.ontvanger_oin,
        )
        if fout is not None:
            raise IntakeRefused(fout.reden.value, fout.melding)
        soort = registry.berichtsoorten[a.berichtsoort]
        if len(a.bijlagen) > self._limits.max_bijlagen:
            raise IntakeRefused(
                IntakeRefused.TE_VEEL_BIJLAGEN,
                f"meer dan {self._limits.max_bijlagen} bijlagen",
            )
        # Documents held in memory (WUS, SMTP) are capped by limits.max_document_bytes as
        # well; a document already streamed to the payload store (FTP) only by the
        # berichtsoort's own limit.
        in_memory = min(soort.max_size, self._limits.max_document_bytes)
        for doc in a.documents:
            limit = soort.max_size if doc.blob is not None else in_memory
            if doc.size > limit:
                raise IntakeRefused(
                    IntakeRefused.TE_GROOT,
                    f"{doc.bestandsnaam}: {doc.size} bytes, maximaal {limit}",
                )

    async def aanleveren(self, a: Aanlevering) -> Accepted:
        started = time.perf_counter()
        try:
            self.precheck(a)
        except IntakeRefused as exc:
            metrics.INTAKE.labels(a.koppelvlak, "refused").inc()
            metrics.INTAKE_REFUSED.labels(a.koppelvlak, exc.reden).inc()
            log.info(
                "aanlevering geweigerd",
                sender_oin=a.sender_oin,
                berichtsoort=a.berichtsoort,
                koppelvlak=a.koppelvlak,
                reden=exc.reden,
                melding=exc.melding,
            )
            raise
        try:
            documents = [await self._store_document(i, d) for i, d in enumerate(a.documents)]
        except Exception as exc:
            metrics.INTAKE.labels(a.koppelvlak, "error").inc()
            log.error("payload opslag mislukt", error=str(exc))
            raise IntakeUnavailable("payload storage failed") from exc
        key = resubmission.sleutel(a, documents) if self._window > 0 else None
        pending = _Pending(NewEnvelope(new_kenmerk(), now(), a, documents), key)
        self._queue.put_nowait(pending)
        accepted = await pending.future
        if pending.original is not None:
            metrics.INTAKE.labels(a.koppelvlak, "resubmitted").inc()
            log.info(
                "herhaalde aanlevering; oorspronkelijk kenmerk teruggegeven",
                kenmerk=str(accepted.kenmerk),
                sender_oin=a.sender_oin,
                berichtsoort=a.berichtsoort,
                koppelvlak=a.koppelvlak,
                aanleverkenmerk=a.aanleverkenmerk,
            )
            return accepted
        metrics.INTAKE.labels(a.koppelvlak, "accepted").inc()
        metrics.MESSAGES_METERED.labels(a.sender_oin, "aangeleverd").inc()
        metrics.ACCEPT_LATENCY.labels(a.koppelvlak).observe(time.perf_counter() - started)
        log.info(
            "aanlevering geaccepteerd",
            kenmerk=str(accepted.kenmerk),
            sender_oin=a.sender_oin,
            berichtsoort=a.berichtsoort,
            koppelvlak=a.koppelvlak,
        )
        return accepted

    async def _store_document(self, seq: int, doc: Document) -> StoredDocument:
        if doc.blob is not None:
            return StoredDocument(
                seq, doc.mime_type, doc.bestandsnaam, doc.blob.size, doc.blob.sha256, None
            )
        assert doc.content is not None
        if len(doc.content) <= self._storage.db_inline_limit:
            return StoredDocument(
                seq,
                doc.mime_type,
                doc.bestandsnaam,
                len(doc.content),
                sha256_hex(doc.content),
                doc.content,
            )
        blob = await self._store.put(doc.content)
        return StoredDocument(seq, doc.mime_type, doc.bestandsnaam, blob.size, blob.sha256, None)

    async def _writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(IntakeUnavailable("intake stopped"))
                raise
            except Exception as exc:
                log.error("intake commit failed", error=str(exc), batch=len(batch))
                for p in batch:
                    if not p.future.done():
                        metrics.INTAKE.labels(p.envelope.aanlevering.koppelvlak, "error").inc()
                        p.future.set_exception(IntakeUnavailable("database unavailable"))
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _commit(self, all_pending: list[_Pending]) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            batch = await self._resubmissions(conn, all_pending)
            envelopes = [p.envelope for p in batch]
            statuses = [
                Status(e.kenmerk, code, tijdstempel=e.tijdstempel)
                for e in envelopes
                for code in ("105", "100", "110")
            ]
            if envelopes:
                await insert_envelopes(conn, envelopes)
                await write_statuses(conn, statuses)
        # Committed: a resubmission answers with its original (committed before or in
        # this very transaction; an original never handed off is the sweeper's).
        for p in all_pending:
            if p.original is not None:
                p.future.set_result(Accepted(p.original.kenmerk, p.original.tijdstempel))
        if not batch:
            return
        metrics.INTAKE_BATCH.observe(len(batch))
        for code in ("105", "100", "110"):
            metrics.STATUSES.labels(code).inc(len(batch))
        results = await asyncio.gather(
            *(self._broker.publish_work(VALIDATE, e.kenmerk) for e in envelopes),
            return_exceptions=True,
        )
        confirmed = []
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                metrics.HANDOFF_FAILED.inc()
                log.warning(
                    "hand-off not confirmed; the sweeper will republish",
                    kenmerk=str(p.envelope.kenmerk),
                    error=repr(result),
                )
            else:
                confirmed.append(p.envelope.kenmerk)
            p.future.set_result(Accepted(p.envelope.kenmerk, p.envelope.tijdstempel))
        if confirmed:
            task = asyncio.get_running_loop().create_task(self._mark(confirmed))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _resubmissions(
        self, conn: asyncpg.Connection, batch: list[_Pending]
    ) -> list[_Pending]:
        """Claim the keys of ``batch``; mark each resubmission with its original and
        return the submissions that need a new envelope. Identical submissions in one
        batch follow the first of them."""
        leaders: dict[bytes, _Pending] = {}
        followers: list[_Pending] = []
        fresh: list[_Pending] = []
        for p in batch:
            if p.sleutel is None:
                fresh.append(p)
            elif p.sleutel in leaders:
                followers.append(p)
            else:
                leaders[p.sleutel] = p
        if not leaders:
            return fresh
        originals = await resubmission.claim(
            conn,
            {
                k: resubmission.Original(p.envelope.kenmerk, p.envelope.tijdstempel)
                for k, p in leaders.items()
            },
            window_seconds=self._window,
        )
        for k, p in leaders.items():
            p.original = originals.get(k)
            if p.original is None:
                fresh.append(p)
        for p in followers:
            assert p.sleutel is not None
            leader = leaders[p.sleutel]
            p.original = leader.original or resubmission.Original(
                leader.envelope.kenmerk, leader.envelope.tijdstempel
            )
        return fresh

    async def _mark(self, kenmerken: list[uuid.UUID]) -> None:
        try:
            await mark_handed_off(self._pool, kenmerken)
        except Exception as exc:  # the sweeper republishes; stages are idempotent
            log.warning("could not mark hand-off", error=str(exc), count=len(kenmerken))
