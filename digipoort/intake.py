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
and creates nothing (:mod:`digipoort.resubmission`).

Round trips (issue 15 item 2): a group commit is ONE statement in its own implicit
transaction (:func:`digipoort.envelopestore.accept_batch`): the koppelvlak's replay check
(WUS: the wsa:MessageID), the resubmission claim, envelopes, documents, statuses — and the
``handed_off`` marks of envelopes whose work item was confirmed since the previous batch.
A mark no batch takes along within ``MARK_DELAY`` is written on its own; a mark lost
(crash) only makes the sweeper republish a work item the stages handle idempotently.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from digipoort.envelopestore import NewEnvelope, Submission, accept_batch, mark_handed_off
from digipoort.payloads import PayloadStore
from digipoort.registry_store import RegistryHolder
from digipoort.status import OMSCHRIJVINGEN, now

log = structlog.get_logger(__name__)

_INTAKE_CODES = ("105", "100", "110")
_INTAKE_STATUSES = tuple((code, OMSCHRIJVINGEN.get(code, code)) for code in _INTAKE_CODES)
#: How long a confirmed hand-off may wait for the next group commit to record it (far
#: below ``intake.sweep_grace_seconds``) before it is written on its own.
MARK_DELAY = 1.0


class IntakeRefused(Exception):
    """A submission refused before a kenmerk was given. ``reden`` is a stable machine
    reason (a :class:`digipoort.registry.Weigering` value or one of the limits below);
    adapters map it to their protocol's error (ALS code, SMTP reply, FTP reply)."""

    TE_GROOT = "te_groot"
    TE_VEEL_BIJLAGEN = "te_veel_bijlagen"
    #: the koppelvlak's message id (``replay``) was used before by this sender
    REPLAY = "replay"

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
    replay: str | None = None
    replayed: bool = False  # set by the writer: refused, the message id was used before
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
        mark_delay: float = MARK_DELAY,
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._store = store
        self._registry = registry
        self._limits = limits
        self._storage = storage
        self._max_batch = max_batch
        self._window = resubmission_window_seconds
        self._mark_delay = mark_delay
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._confirmed: list[uuid.UUID] = []  # hand-offs confirmed, not yet recorded
        self._marks_waiting = asyncio.Event()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer()) for _ in range(self._writers)]
        self._flusher = loop.create_task(self._flush_marks())

    async def stop(self) -> None:
        """Finish what was handed in, then stop the writers."""
        await self._queue.join()
        for t in (*self._tasks, self._flusher):
            t.cancel()
        await asyncio.gather(*self._tasks, self._flusher, return_exceptions=True)
        if self._confirmed:  # a clean stop leaves nothing for the sweeper
            with contextlib.suppress(Exception):
                await mark_handed_off(self._pool, self._confirmed)
            self._confirmed = []

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

    async def aanleveren(self, a: Aanlevering, *, replay: str | None = None) -> Accepted:
        """Accept ``a`` durably and return its kenmerk (or the original's, for a
        resubmission). ``replay``: a message id of the koppelvlak (WUS: the digest of the
        wsa:MessageID) that this sender may use once; it is recorded in the same statement
        as the envelope, and a second use raises IntakeRefused(REPLAY)."""
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
        pending = _Pending(NewEnvelope(new_kenmerk(), now(), a, documents), key, replay)
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
        # envelopes of earlier batches whose work item was confirmed ride along
        marks, self._confirmed = self._confirmed, []
        try:
            async with self._pool.acquire() as conn:
                batch = await self._accept(conn, all_pending, marks)
        except BaseException:
            self._confirmed.extend(marks)  # the statement rolled back: mark them later
            raise
        # Committed: a resubmission answers with its original (committed before or in
        # this very batch; an original never handed off is the sweeper's).
        for p in all_pending:
            if p.original is not None:
                p.future.set_result(Accepted(p.original.kenmerk, p.original.tijdstempel))
            elif p.replayed:
                metrics.INTAKE.labels(p.envelope.aanlevering.koppelvlak, "refused").inc()
                metrics.INTAKE_REFUSED.labels(
                    p.envelope.aanlevering.koppelvlak, IntakeRefused.REPLAY
                ).inc()
                p.future.set_exception(
                    IntakeRefused(IntakeRefused.REPLAY, "bericht-id eerder gebruikt")
                )
        if not batch:
            return
        metrics.INTAKE_BATCH.observe(len(batch))
        for code in _INTAKE_CODES:
            metrics.STATUSES.labels(code).inc(len(batch))
        results = await asyncio.gather(
            *(self._broker.publish_work(VALIDATE, p.envelope.kenmerk) for p in batch),
            return_exceptions=True,
        )
        confirmed = 0
        for p, result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                metrics.HANDOFF_FAILED.inc()
                log.warning(
                    "hand-off not confirmed; the sweeper will republish",
                    kenmerk=str(p.envelope.kenmerk),
                    error=repr(result),
                )
            else:
                self._confirmed.append(p.envelope.kenmerk)
                confirmed += 1
            p.future.set_result(Accepted(p.envelope.kenmerk, p.envelope.tijdstempel))
        if confirmed:
            self._marks_waiting.set()

    async def _accept(
        self, conn: asyncpg.Connection, pending: list[_Pending], marks: list[uuid.UUID]
    ) -> list[_Pending]:
        """Run the batch through :func:`accept_batch` (one statement; one more when a
        key was claimed by a batch committed while it ran). Sets ``original`` /
        ``replayed`` on the submissions that create nothing; returns those whose envelope
        was created."""
        created: list[_Pending] = []
        todo = pending
        for attempt in range(3):
            if not todo:
                break
            try:
                lost = await self._accept_pass(conn, todo, marks, created)
            except Exception as exc:
                if attempt == 0:
                    raise  # nothing was committed: the whole batch fails
                # the first pass committed: only the submissions still open fail
                _fail(todo, f"resubmission lookup failed: {exc!r}")
                return created
            marks = []
            todo = []
            if lost:  # claimed by a batch committed while this statement ran
                try:
                    found = await resubmission.originals(conn, list(lost))
                except Exception as exc:
                    _fail([p for ps in lost.values() for p in ps], repr(exc))
                    return created
                for key, ps in lost.items():
                    for p in ps:
                        if key in found:
                            p.original = found[key]
                        else:  # that original vanished meanwhile: claim the key again
                            p.replay = None  # its message id was recorded just now
                            todo.append(p)
        _fail(todo, "resubmission key could not be claimed")
        return created

    async def _accept_pass(
        self,
        conn: asyncpg.Connection,
        todo: list[_Pending],
        marks: list[uuid.UUID],
        created: list[_Pending],
    ) -> dict[bytes, list[_Pending]]:
        """One :func:`accept_batch` statement; returns the submissions whose key a
        concurrent batch claimed (their original is read separately)."""
        outcomes = await accept_batch(
            conn,
            [Submission(p.envelope, p.sleutel, p.replay) for p in todo],
            statuses=_INTAKE_STATUSES,
            handed_off=marks,
            window_seconds=self._window,
        )
        lost: dict[bytes, list[_Pending]] = {}
        for p, outcome in zip(todo, outcomes, strict=True):
            if outcome.created:
                created.append(p)
            elif outcome.replayed:
                p.replayed = True
            elif outcome.original is not None:
                p.original = resubmission.Original(*outcome.original)
            else:
                assert p.sleutel is not None
                lost.setdefault(p.sleutel, []).append(p)
        return lost

    async def _flush_marks(self) -> None:
        """Mark confirmed envelopes that no group commit took along within MARK_DELAY
        (a quiet gateway; ``mark_delay``, MARK_DELAY at most); under load every batch takes
        them for free."""
        while True:
            await self._marks_waiting.wait()
            await asyncio.sleep(self._mark_delay)
            self._marks_waiting.clear()
            marks, self._confirmed = self._confirmed, []
            if not marks:
                continue
            try:
                await mark_handed_off(self._pool, marks)
            except Exception as exc:  # the sweeper republishes; stages are idempotent
                log.warning("could not mark hand-off", error=str(exc), count=len(marks))


def _fail(pending: list[_Pending], why: str) -> None:
    """Answer submissions left open after part of their batch committed: nothing of
    theirs was created, so they get a technical failure (the sender tries again)."""
    if pending:
        log.error("intake: submissions left unanswered", error=why, count=len(pending))
    for p in pending:
        if not p.future.done():
            metrics.INTAKE.labels(p.envelope.aanlevering.koppelvlak, "error").inc()
            p.future.set_exception(IntakeUnavailable("database unavailable"))
