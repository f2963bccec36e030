"""A stage worker: a small loop around a batch handler (the broker plumbing in one place).

Messages are consumed with a prefetch window and handed to the handler in batches (all
that are waiting, up to ``max_batch``), so one database transaction and one round of
publishes serve many envelopes. A batch is acked only after the handler returned, i.e.
after its results were committed and the next stage's messages confirmed. If the handler
fails for a batch, each message is retried alone; one that still fails is nacked and
redelivered. On its last allowed delivery (the quorum queue's ``x-delivery-count`` header
has reached the delivery limit) a failing message is dead-lettered by the worker itself:
published with a confirm to ``digipoort.dead`` with the stage and the reason in its
headers, then acked, so the operator and the sender's history (``routing/deadletters.py``
records the status) both learn why. Should that publish fail, the message is nacked and
the broker's own delivery limit dead-letters it (``x-death`` then says which queue).
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

log = structlog.get_logger(__name__)

Handler = Callable[[list[UUID]], Awaitable[None]]


def parse_work_item(body: bytes) -> UUID:
    """The kenmerk of a work message; ValueError for anything else."""
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("kenmerk"), str):
        raise ValueError("not a work item")
    return UUID(data["kenmerk"])


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
    ) -> None:
        self._broker = broker
        # the work queue's x-delivery-limit (the broker's setting unless given)
        self._delivery_limit = broker.delivery_limit if delivery_limit is None else delivery_limit
        self._retry_backoff = retry_backoff
        self._stage = stage
        self._handler = handler
        self._prefetch = prefetch
        self._max_batch = max_batch
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._channel: AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._queue: AbstractQueue
        self._task: asyncio.Task[None] | None = None
        self._processing = asyncio.Lock()

    async def start(self) -> None:
        self._channel = await self._broker.channel(prefetch=self._prefetch)
        self._queue = await self._broker.declare_work_queue(self._channel, self._stage)
        self._consumer_tag = await self._queue.consume(self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._loop())
        log.info("stage consuming", stage=self._stage)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)

    async def stop(self) -> None:
        """Stop taking work, finish the batch in hand; unacked messages return to the queue."""
        if self._channel is not None and self._consumer_tag is not None:
            try:
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
                await self._channel.close()
            except Exception as exc:
                log.debug("channel close failed", error=str(exc))

    async def _loop(self) -> None:
        while True:
            batch = [await self._buffer.get()]
            async with self._processing:
                while len(batch) < self._max_batch and not self._buffer.empty():
                    batch.append(self._buffer.get_nowait())
                await self._process(batch)

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        items: list[tuple[AbstractIncomingMessage, UUID]] = []
        for message in batch:
            try:
                items.append((message, parse_work_item(message.body)))
            except (ValueError, UnicodeDecodeError) as exc:
                log.error("not a work item; dead-lettered", stage=self._stage, error=str(exc))
                metrics.DEAD_LETTERED.labels(self._stage, "malformed").inc()
                await _settle(message.reject(requeue=False))
        if not items:
            return
        try:
            await self._handler([k for _, k in items])
        except Exception as exc:
            if len(items) == 1:
                await self._failed(items[0][0], items[0][1], exc)
            else:
                log.warning("batch failed; retrying one by one", stage=self._stage, error=str(exc))
                for message, kenmerk in items:
                    try:
                        await self._handler([kenmerk])
                    except Exception as exc1:
                        await self._failed(message, kenmerk, exc1)
                    else:
                        await _settle(message.ack())
                        metrics.STAGE_MESSAGES.labels(self._stage, "ok").inc()
            return
        finally:
            metrics.STAGE_DURATION.labels(self._stage).observe(time.perf_counter() - started)
        for message, _ in items:
            await _settle(message.ack())
        metrics.STAGE_MESSAGES.labels(self._stage, "ok").inc(len(items))

    async def _failed(
        self, message: AbstractIncomingMessage, kenmerk: UUID, exc: Exception
    ) -> None:
        deliveries = delivery_count(message)
        if deliveries >= self._delivery_limit:
            await self._dead_letter(message, kenmerk, exc, deliveries)
            return
        log.error(
            "stage failed; message returned to the queue",
            stage=self._stage,
            kenmerk=str(kenmerk),
            error=repr(exc),
            redelivered=message.redelivered,
        )
        metrics.STAGE_MESSAGES.labels(self._stage, "failed").inc()
        # back off before the redelivery (the consumer holds the message meanwhile)
        await asyncio.sleep(min(60.0, self._retry_backoff * 2**deliveries))
        await _settle(message.nack(requeue=True))

    async def _dead_letter(
        self, message: AbstractIncomingMessage, kenmerk: UUID, exc: Exception, deliveries: int
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        bound = log.bind(kenmerk=str(kenmerk), stage=self._stage)
        try:
            await self._broker.publish_dead(
                message.body,
                message_id=str(kenmerk),
                stage=self._stage,
                queue=WORK_QUEUES.get(self._stage, self._stage),
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
            metrics.STAGE_MESSAGES.labels(self._stage, "failed").inc()
            await _settle(message.nack(requeue=True))
            return
        await _settle(message.ack())
        bound.error("poison message dead-lettered", reason=reason, deliveries=deliveries + 1)
        metrics.STAGE_MESSAGES.labels(self._stage, "dead_lettered").inc()
        metrics.DEAD_LETTERED.labels(self._stage, "delivery_limit").inc()


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
