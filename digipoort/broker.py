"""RabbitMQ: topology, the connection and confirmed publishing.

Topology (declared idempotently at start by every process):

* ``digipoort.work`` (direct): ``validate`` → quorum queue ``digipoort.validate``,
  ``route`` → ``digipoort.route``. Messages carry only the kenmerk (claim check: the
  envelope and its documents are in PostgreSQL / the payload store).
* ``digipoort.aflever`` (direct): routing key = recipient OIN → quorum queue
  ``digipoort.aflever.<OIN>``; body = an ``afleverRequest`` document.
* ``digipoort.dead`` (fanout) → quorum queue ``digipoort.dead``: messages that exceeded
  the delivery limit of a work queue (poison messages), dead-lettered at-least-once.
  The same fanout also feeds ``digipoort.dead.history``, from which the ``deadletters``
  component records the status that tells the sender (``routing/deadletters.py``).
  A stage that gives up on a message itself publishes it there with the reason in
  ``x-digipoort-*`` headers (:meth:`Broker.publish_dead`).
* ``digipoort.status`` (topic) → quorum queue ``digipoort.statusreports``: recipients'
  own ``zetStatusRequest`` reports (routing key: the recipient's OIN), consumed by the
  ``statusreports`` component; refused reports are dead-lettered with a reason.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.exceptions import DeliveryError
from pamqp.commands import Basic

from digipoort import brokerconn, metrics
from digipoort.config import BrokerConfig

log = structlog.get_logger(__name__)

WORK_EXCHANGE = "digipoort.work"
AFLEVER_EXCHANGE = "digipoort.aflever"
DEAD_EXCHANGE = "digipoort.dead"
DEAD_QUEUE = "digipoort.dead"
VALIDATE = "validate"
ROUTE = "route"
WORK_QUEUES = {VALIDATE: "digipoort.validate", ROUTE: "digipoort.route"}
DEAD_HISTORY_QUEUE = "digipoort.dead.history"
STATUS_EXCHANGE = "digipoort.status"
STATUS_QUEUE = "digipoort.statusreports"
STATUS_REPORTS = "statusreports"
# Headers of a message a stage dead-lettered itself (the broker adds ``x-death`` instead).
DEAD_STAGE = "x-digipoort-stage"
DEAD_QUEUE_HEADER = "x-digipoort-queue"
DEAD_REASON = "x-digipoort-reason"
DEAD_DELIVERIES = "x-digipoort-deliveries"


#: how long a nack keeps :attr:`Broker.publishing` false without a publish since
NACK_MEMORY = 60.0
#: a nacked publisher channel is replaced at most this often (:meth:`Broker._renew_publisher_soon`)
RENEW_PUBLISHER_SECONDS = 5.0


def aflever_queue(oin: str) -> str:
    return f"digipoort.aflever.{oin}"


def _work_queue_args(delivery_limit: int) -> dict[str, Any]:
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": delivery_limit,
        "x-dead-letter-exchange": DEAD_EXCHANGE,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def _aflever_queue_args() -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-overflow": "reject-publish"}


class Broker:
    """One robust connection with a confirming publisher channel. ``url`` is one node or
    the list of a cluster's nodes: the connection goes to any node that answers and on to
    another when its node dies (:mod:`digipoort.brokerconn`)."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        delivery_limit: int = 5,
        publish_timeout: float = 10.0,
        quorum_group_size: int | None = None,
        connect_timeout: float = 10.0,
        reconnect_seconds: float = 5.0,
    ) -> None:
        self.urls = brokerconn.as_list(url)
        self.url = self.urls[0]
        self.quorum_group_size = quorum_group_size
        self.connect_timeout = connect_timeout
        self.reconnect_seconds = reconnect_seconds
        self.publish_timeout = publish_timeout
        self.delivery_limit = delivery_limit
        self.connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._work: AbstractExchange | None = None
        self._aflever: AbstractExchange | None = None
        self._dead: AbstractExchange | None = None
        self._declared_aflever: set[str] = set()
        self.topology_declared = False
        # since when publishes are refused (Basic.Nack), None while they are confirmed
        self._refused_since: float | None = None
        self._last_nack = 0.0
        self._renewed = 0.0
        self._renewing: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, broker: BrokerConfig) -> Broker:
        """A broker with every connection setting of ``broker`` (the nodes, the quorum
        group size, the timeouts)."""
        return cls(
            broker.nodes,
            delivery_limit=broker.delivery_limit,
            publish_timeout=broker.publish_timeout_seconds,
            quorum_group_size=broker.quorum_group_size,
            connect_timeout=broker.connect_timeout_seconds,
            reconnect_seconds=broker.reconnect_seconds,
        )

    async def connect(self) -> None:
        self.connection = await brokerconn.connect_robust(
            self.urls,
            name="digipoort",
            quorum_group_size=self.quorum_group_size,
            connect_timeout=self.connect_timeout,
            reconnect_seconds=self.reconnect_seconds,
        )
        self._channel = await self.connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        await self.declare_topology()

    @property
    def node(self) -> str | None:
        """The node (URL, password redacted) this process is connected to, or was last."""
        if isinstance(self.connection, brokerconn.ClusterConnection):
            return self.connection.node
        return None

    @property
    def connected(self) -> bool:
        """Up right now: a robust connection that is reconnecting is not "closed", but
        it is not connected either."""
        return (
            self.connection is not None
            and not self.connection.is_closed
            and self.connection.connected.is_set()
        )

    @property
    def publishing(self) -> bool:
        """False from a ``Basic.Nack`` until the next confirmed publish — or until
        :data:`NACK_MEMORY` seconds without a nack (a process that rarely publishes does not
        stay "not ready" on an old refusal)."""
        return self._refused_since is None or time.monotonic() - self._last_nack > NACK_MEMORY

    async def _publish(
        self, exchange: AbstractExchange, message: aio_pika.Message, routing_key: str, **kw: Any
    ) -> None:
        """Publish and wait for the confirm. Every nack is counted
        (``digipoort_publish_nacked_total``); the first of a run is logged as an error and
        flips :attr:`publishing` (and with it readiness); the first confirm after it logs
        the end of the run."""
        try:
            await exchange.publish(
                message, routing_key=routing_key, timeout=self.publish_timeout, **kw
            )
        except DeliveryError as exc:
            if isinstance(exc.frame, Basic.Nack):
                metrics.PUBLISH_NACKED.labels(exchange.name).inc()
                self._renew_publisher_soon()
                self._last_nack = time.monotonic()
                if self._refused_since is None:
                    self._refused_since = self._last_nack
                    log.error(
                        "publishes refused by the broker (nack)",
                        exchange=exchange.name,
                        routing_key=routing_key,
                    )
            raise
        if self._refused_since is not None:
            log.warning(
                "broker takes publishes again",
                refused_seconds=round(time.monotonic() - self._refused_since, 1),
            )
            self._refused_since = None

    def _renew_publisher_soon(self) -> None:
        """After a nack, replace the publisher channel (at most every
        :data:`RENEW_PUBLISHER_SECONDS`). RabbitMQ keeps per-channel state of each quorum
        queue's enqueuer; a channel that registered while the queue was electing a new
        leader (its node had just died) can stay refused for good (seen with 3.10),
        while a fresh channel publishes. A nack for a real reason (a full queue) only
        costs a channel now and then."""
        now = time.monotonic()
        if self._renewing is not None or now - self._renewed < RENEW_PUBLISHER_SECONDS:
            return
        self._renewed = now
        self._renewing = asyncio.get_running_loop().create_task(self._renew_publisher())

    async def _renew_publisher(self) -> None:
        old = self._channel
        try:
            if self.connection is None or not self.connected:
                return  # a reconnect opens fresh channels anyway
            self._channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
            await self.declare_topology(self._declared_aflever.copy())
            log.warning("publisher channel renewed after a nack", node=self.node)
            if old is not None:
                async with asyncio.timeout(5):
                    await old.close()
        except Exception as exc:  # the next nack tries again
            log.warning("renewing the publisher channel failed", error=repr(exc))
        finally:
            self._renewing = None

    async def channel(self, prefetch: int = 0) -> AbstractChannel:
        assert self.connection is not None
        ch = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        if prefetch:
            await ch.set_qos(prefetch_count=prefetch)
        return ch

    async def declare_topology(self, recipients: Iterable[str] = ()) -> None:
        ch = self._channel
        assert ch is not None
        dead = await ch.declare_exchange(DEAD_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
        dq = await ch.declare_queue(DEAD_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        await dq.bind(dead)
        self._dead = dead
        hq = await ch.declare_queue(
            DEAD_HISTORY_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )
        await hq.bind(dead)
        status = await ch.declare_exchange(
            STATUS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        sq = await self.declare_status_queue(ch)
        await sq.bind(status, routing_key="#")
        self._work = await ch.declare_exchange(
            WORK_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        for key, name in WORK_QUEUES.items():
            q = await ch.declare_queue(
                name, durable=True, arguments=_work_queue_args(self.delivery_limit)
            )
            await q.bind(self._work, routing_key=key)
        self._aflever = await ch.declare_exchange(
            AFLEVER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True
        )
        self._declared_aflever.clear()
        await self.ensure_aflever_queues(recipients)
        self.topology_declared = True

    async def declare_work_queue(self, channel: AbstractChannel, stage: str) -> AbstractQueue:
        """The work queue of ``stage`` on ``channel``, declared (idempotently) so a robust
        channel re-declares it and restores its consumers after a reconnect."""
        return await channel.declare_queue(
            WORK_QUEUES[stage], durable=True, arguments=_work_queue_args(self.delivery_limit)
        )

    async def declare_status_queue(self, channel: AbstractChannel) -> AbstractQueue:
        """The queue of recipients' status reports (same limits as a work queue)."""
        return await channel.declare_queue(
            STATUS_QUEUE, durable=True, arguments=_work_queue_args(self.delivery_limit)
        )

    async def declare_dead_history_queue(self, channel: AbstractChannel) -> AbstractQueue:
        return await channel.declare_queue(
            DEAD_HISTORY_QUEUE, durable=True, arguments={"x-queue-type": "quorum"}
        )

    async def publish_dead(
        self,
        body: bytes,
        *,
        message_id: str | None,
        stage: str,
        queue: str,
        reason: str,
        deliveries: int,
        content_type: str | None = None,
    ) -> None:
        """Dead-letter a message with the reason in its headers; returns after the confirm."""
        assert self._dead is not None
        await self._publish(
            self._dead,
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=message_id,
                content_type=content_type,
                headers={
                    DEAD_STAGE: stage,
                    DEAD_QUEUE_HEADER: queue,
                    DEAD_REASON: reason[:2000],
                    DEAD_DELIVERIES: deliveries,
                },
            ),
            "",
        )

    async def ensure_aflever_queues(self, recipients: Iterable[str]) -> None:
        ch = self._channel
        assert ch is not None and self._aflever is not None
        for oin in recipients:
            if oin in self._declared_aflever:
                continue
            q = await ch.declare_queue(
                aflever_queue(oin), durable=True, arguments=_aflever_queue_args()
            )
            await q.bind(self._aflever, routing_key=oin)
            self._declared_aflever.add(oin)

    async def publish_work(self, stage: str, kenmerk: UUID) -> None:
        """Publish a work item and wait for the broker's confirm."""
        assert self._work is not None
        body = json.dumps({"kenmerk": str(kenmerk)}).encode()
        await self._publish(
            self._work,
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(kenmerk),
                content_type="application/json",
            ),
            stage,
            mandatory=True,
        )

    async def publish_aflever(
        self, recipient_oin: str, kenmerk: UUID, berichtsoort: str, body: bytes
    ) -> None:
        assert self._aflever is not None
        await self._publish(
            self._aflever,
            aio_pika.Message(
                body,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(kenmerk),
                type=berichtsoort,
                content_type="application/xml",
                headers={"ontvanger": recipient_oin},
            ),
            recipient_oin,
            mandatory=True,
        )

    async def close(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
