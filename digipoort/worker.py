"""A stage worker: a small loop around a batch handler (the broker plumbing in one place).

Messages are consumed with a prefetch window and handed to the handler in batches (all
that are waiting, up to ``max_batch``), so one database transaction and one round of
publishes serve many envelopes. A batch is acked only after the handler returned, i.e.
after its results were committed and the next stage's messages confirmed.

Two kinds of failure are told apart (:func:`digipoort.outages.is_outage`):

* **An outage** of PostgreSQL or RabbitMQ (connection refused or lost, a publish not
  confirmed or nacked, the server shutting down or starting up) is not a property of the
  message. The stage holds the batch — no nack, so the quorum queue's delivery count does
  not move and nothing is dead-lettered — and stops taking work (its prefetch window is
  full and unacked), reports itself not ready, probes the dependencies (database
  ``SELECT 1``, broker connection) every ``outage_poll`` seconds at most and runs the
  same batch again as soon as they answer. An outage of hours costs nothing but time.
* **A failure of the message** (envelope missing, handler bug, unroutable publish): the
  batch is retried one by one; a message that still fails is returned to the queue after
  a backoff of its own (``retry_backoff`` doubling per delivery, capped at 60 s) — a timer,
  not a sleep, so the stage keeps serving every other message meanwhile. On its last
  allowed delivery (``x-delivery-count`` has reached the delivery limit) it is
  dead-lettered by the worker itself: published with a confirm to ``digipoort.dead``
  with the stage and the reason in its headers, then acked, so the operator and the
  sender's history (``routing/deadletters.py`` records the status) both learn why.
  Should that publish fail, the message is nacked and the broker's own delivery limit
  dead-letters it (``x-death`` then says which queue).

A message that is not a work item at all is dead-lettered at once. Never dropped.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from uuid import UUID

import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from digipoort import metrics
from digipoort.broker import WORK_QUEUES, Broker
from digipoort.outages import describe_outage, is_outage

log = structlog.get_logger(__name__)

Handler = Callable[[list[UUID]], Awaitable[None]]


def parse_work_item(body: bytes) -> UUID:
    """The kenmerk of a work message; ValueError for anything else."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("kenmerk"), str):
        raise ValueError("not a work item")
    return UUID(data["kenmerk"])


Probe = Callable[[], Awaitable[bool]]


class _Stopping(Exception):
    """The consumer was stopped while it held a batch through an outage."""


class BatchConsumer:
    def __init__(
        self,
        broker: Broker,
        stage: str,
        handler: Handler,
        *,
        prefetch: int = 256,
        max_batch: int = 128,
        delivery_limit: int | None = None,
        retry_backoff: float = 2.0,
        probe: Probe | None = None,
        outage_poll: float = 1.0,
        gather: float = 0.0,
    ) -> None:
        self._broker = broker
        # the work queue's x-delivery-limit (the broker's setting unless given)
        self._delivery_limit = broker.delivery_limit if delivery_limit is None else delivery_limit
        self._retry_backoff = retry_backoff
        self._probe = probe or self._broker_up
        self._outage_poll = outage_poll
        self.stage = stage
        self._handler = handler
        self._prefetch = prefetch
        # a batch is at most half the prefetch window: the next one arrives meanwhile
        self._max_batch = max(1, min(max_batch, prefetch // 2 or max_batch))
        self._gather = gather
        # delivery tags delivered on each channel and not settled yet (multiple=True acks
        # must never cover a message held for its retry backoff or through an outage)
        self._unsettled: dict[object, set[int]] = {}
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._queue: AbstractQueue
        self._task: asyncio.Task[None] | None = None
        self._processing = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._retries: set[asyncio.TimerHandle] = set()
        #: what the stage is waiting for during an outage ("database", "broker"), else None
        self.waiting_for: str | None = None
        self._outage_started = 0.0
        self._outage_delay = 0.0

    async def _broker_up(self) -> bool:
        return self._broker.connected

    async def start(self) -> None:
        self._channel = await self._broker.channel(prefetch=self._prefetch)
        self._queue = await self._broker.declare_work_queue(self._channel, self.stage)
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._loop())
        log.info("stage consuming", stage=self.stage)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        channel = _channel_of(message)
        if message.delivery_tag is not None and channel is not None:
            if channel not in self._unsettled:  # a new channel: forget closed ones
                for ch in [c for c in self._unsettled if getattr(c, "is_closed", False)]:
                    del self._unsettled[ch]
            self._unsettled.setdefault(channel, set()).add(message.delivery_tag)
        self._buffer.put_nowait(message)

    def _settled(self, message: AbstractIncomingMessage) -> None:
        channel = _channel_of(message)
        if channel is None:
            return
        tags = self._unsettled.get(channel)
        if tags is not None and message.delivery_tag is not None:
            tags.discard(message.delivery_tag)
            if not tags:
                del self._unsettled[channel]

    async def _ack_all(self, messages: list[AbstractIncomingMessage]) -> None:
        """Ack a processed batch: per channel one ``basic.ack multiple=True`` on the
        highest delivery tag when every unsettled tag up to it is in the batch, else one
        ack per message (messages of a channel closed meanwhile — a reconnect — are
        redelivered by the broker anyway: their acks fail and are only logged)."""
        by_channel: dict[object, list[AbstractIncomingMessage]] = {}
        for m in messages:
            by_channel.setdefault(_channel_of(m), []).append(m)
        for channel, group in by_channel.items():
            if channel is None:
                for m in group:
                    await _settle(m.ack())
                continue
            tags = {m.delivery_tag for m in group if m.delivery_tag is not None}
            last = max(group, key=lambda m: m.delivery_tag or 0)
            outstanding = self._unsettled.get(channel, set())
            covered = last.delivery_tag is not None and all(
                t in tags for t in outstanding if t <= last.delivery_tag
            )
            if covered and len(group) > 1:
                await _settle(last.ack(multiple=True))
            else:
                for m in group:
                    await _settle(m.ack())
            for m in group:
                self._settled(m)

    async def stop(self) -> None:
        """Stop taking work, finish the batch in hand; unacked messages return to the queue
        (also those held through an outage or waiting for their retry)."""
        self._stopping.set()
        for handle in self._retries:
            handle.cancel()
        self._retries.clear()
        if self._channel is not None and self._consumer_tag is not None:
            try:  # bounded: during a broker outage there is nobody to answer
                async with asyncio.timeout(5):
                    await self._queue.cancel(self._consumer_tag)
            except Exception as exc:
                log.warning("cancel consumer failed", error=str(exc))
        async with self._processing:  # wait for the batch in hand
            if self._task is not None:
                self._task.cancel()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._channel is not None:
            try:
                async with asyncio.timeout(5):
                    await self._channel.close()
            except Exception as exc:
                log.debug("channel close failed", error=str(exc))

    async def _loop(self) -> None:
        while True:
            batch = [await self._buffer.get()]
            if self._gather > 0 and self._buffer.qsize() + 1 < self._max_batch:
                # light load: a short gathering window, so one transaction and one confirm
                # round serve the envelopes arriving within it (one timer, no polling)
                await asyncio.sleep(self._gather)
            async with self._processing:
                while len(batch) < self._max_batch and not self._buffer.empty():
                    batch.append(self._buffer.get_nowait())
                try:
                    await self._process(batch)
                except _Stopping:
                    return
                except Exception as exc:  # never let the loop die silently
                    log.error(
                        "stage loop error; batch left unacked", stage=self.stage, error=repr(exc)
                    )

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        items: list[tuple[AbstractIncomingMessage, UUID]] = []
        for message in batch:
            try:
                items.append((message, parse_work_item(message.body)))
            except (ValueError, UnicodeDecodeError) as exc:
                log.error("not a work item; dead-lettered", stage=self.stage, error=str(exc))
                metrics.DEAD_LETTERED.labels(self.stage, "malformed").inc()
                await _settle(message.reject(requeue=False))
                self._settled(message)
        if not items:
            return
        try:
            failure = await self._run([k for _, k in items])
        finally:
            metrics.STAGE_DURATION.labels(self.stage).observe(time.perf_counter() - started)
        if failure is None:
            await self._ack_all([m for m, _ in items])
            metrics.STAGE_MESSAGES.labels(self.stage, "ok").inc(len(items))
        elif len(items) == 1:
            await self._failed(items[0][0], items[0][1], failure)
        else:
            log.warning("batch failed; retrying one by one", stage=self.stage, error=str(failure))
            for message, kenmerk in items:
                failure = await self._run([kenmerk])
                if failure is None:
                    await _settle(message.ack())
                    self._settled(message)
                    metrics.STAGE_MESSAGES.labels(self.stage, "ok").inc()
                else:
                    await self._failed(message, kenmerk, failure)

    async def _run(self, kenmerken: list[UUID]) -> Exception | None:
        """Run the handler; through an outage hold the batch and run it again once the
        dependencies answer. Returns the failure of the message(s), None on success."""
        while True:
            try:
                await self._handler(kenmerken)
            except Exception as exc:
                if is_outage(exc):
                    await self._wait_out(exc)
                    continue
                self._resumed()  # the dependencies answered: this one is the message's
                return exc
            self._resumed()
            return None

    async def _wait_out(self, exc: Exception) -> None:
        """Wait until the probe says the dependencies answer. The wait between probes
        grows from 0.1 s to ``outage_poll`` and stays there for the rest of the outage
        (a nacked publish is invisible to the probe: the retry itself is the test)."""
        if self.waiting_for is None:
            self.waiting_for = describe_outage(exc)
            self._outage_started = time.monotonic()
            self._outage_delay = min(0.1, self._outage_poll)
            metrics.STAGE_WAITING.labels(self.stage).set(1)
            log.error(
                "dependency unavailable; stage holds its work and waits",
                stage=self.stage,
                waiting_for=self.waiting_for,
                error=repr(exc),
            )
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), timeout=self._outage_delay)
            except TimeoutError:
                pass
            else:
                raise _Stopping
            self._outage_delay = min(self._outage_delay * 2, self._outage_poll)
            try:
                if await self._probe():
                    return
            except Exception as probe_exc:
                log.debug("probe failed", stage=self.stage, error=repr(probe_exc))

    def _resumed(self) -> None:
        if self.waiting_for is not None:
            log.warning(
                "dependency back; stage resumes",
                stage=self.stage,
                waited_for=self.waiting_for,
                seconds=round(time.monotonic() - self._outage_started, 1),
            )
            self.waiting_for = None
            metrics.STAGE_WAITING.labels(self.stage).set(0)

    async def _failed(
        self, message: AbstractIncomingMessage, kenmerk: UUID, exc: Exception
    ) -> None:
        deliveries = delivery_count(message)
        if deliveries >= self._delivery_limit:
            await self._dead_letter(message, kenmerk, exc, deliveries)
            return
        backoff = min(60.0, self._retry_backoff * 2**deliveries)
        log.error(
            "stage failed; message returned to the queue after its backoff",
            stage=self.stage,
            kenmerk=str(kenmerk),
            error=repr(exc),
            redelivered=message.redelivered,
            backoff_seconds=backoff,
        )
        metrics.STAGE_MESSAGES.labels(self.stage, "failed").inc()
        # back off before the redelivery: the consumer holds this one message meanwhile
        # while the loop goes on serving the others
        loop = asyncio.get_running_loop()

        def requeue() -> None:
            self._retries.discard(handle)
            self._settled(message)
            task = loop.create_task(_settle(message.nack(requeue=True)))
            _background.add(task)
            task.add_done_callback(_background.discard)

        handle = loop.call_later(backoff, requeue)
        self._retries.add(handle)

    async def _dead_letter(
        self, message: AbstractIncomingMessage, kenmerk: UUID, exc: Exception, deliveries: int
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        bound = log.bind(kenmerk=str(kenmerk), stage=self.stage)
        try:
            await self._broker.publish_dead(
                message.body,
                message_id=str(kenmerk),
                stage=self.stage,
                queue=WORK_QUEUES.get(self.stage, self.stage),
                reason=reason,
                deliveries=deliveries + 1,
                content_type=message.content_type,
            )
        except Exception as pub_exc:
            bound.error(
                "dead-lettering failed; the queue's delivery limit will",
                error=repr(pub_exc),
                reason=reason,
            )
            metrics.STAGE_MESSAGES.labels(self.stage, "failed").inc()
            await _settle(message.nack(requeue=True))
            self._settled(message)
            return
        await _settle(message.ack())
        self._settled(message)
        bound.error("poison message dead-lettered", reason=reason, deliveries=deliveries + 1)
        metrics.STAGE_MESSAGES.labels(self.stage, "dead_lettered").inc()
        metrics.DEAD_LETTERED.labels(self.stage, "delivery_limit").inc()


_background: set[asyncio.Task[None]] = set()


def _channel_of(message: AbstractIncomingMessage) -> object | None:
    """The (low-level) channel a message came on; None once that channel is closed
    (aio-pika raises then: after a reconnect the broker redelivers the message)."""
    try:
        return message.channel
    except Exception:
        return None


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How often this message was delivered before (quorum queues' ``x-delivery-count``)."""
    value = (message.headers or {}).get("x-delivery-count")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def _settle(op: Awaitable[None]) -> None:
    """Ack/nack/reject; after a reconnect the delivery tag is stale and the broker
    redelivers the message anyway, so a failure here is logged, not raised."""
    try:
        await op
    except Exception as exc:
        log.warning("could not settle message (it will be redelivered)", error=repr(exc))
