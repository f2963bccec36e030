"""Connections to a RabbitMQ cluster: any reachable node of a list, and on to the next one.

A client is connected to one node at a time. ``broker.urls`` lists the nodes (the same
vhost, user and query on each; only host and port differ). :class:`ClusterConnection` is
aio-pika's robust connection with one change: every connection attempt — the first one
and each reconnect — walks the list, starting after the node used last (the first
attempt at a random node, so processes spread over the cluster), until a node takes the
connection. When the node of a running connection dies, the reconnect therefore
goes to another node first, and the robust channels re-declare their queues and restore
their consumers there. Only when no node answers does the attempt fail (and the robust
connection tries again after ``reconnect_seconds``).

Quorum queues get ``x-quorum-initial-group-size`` (``broker.quorum_initial_group_size``,
3 by default when ≥ 3 nodes are configured) from the channels of this connection. A
queue that already exists with another membership size (declared before the cluster
grew) is used as it is, with a warning: the size only applies when a queue is created;
``rabbitmq-queues grow`` changes it later.

:func:`connect_first` is the plain (non-robust) connection of the short-lived tools (the
CLI, dead-letter actions): the first node of the list that answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractConnection, AbstractRobustQueue, TimeoutType
from aio_pika.exceptions import ChannelPreconditionFailed
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from digipoort.config import redact_url

log = structlog.get_logger(__name__)

GROUP_SIZE = "x-quorum-initial-group-size"
#: the default membership of a quorum queue on a cluster of at least this many nodes
DEFAULT_GROUP_SIZE = 3

# the private step of aio-pika's RobustConnection that makes one connection attempt
_ATTEMPT = "_RobustConnection__connect_transport"


def as_list(urls: str | Sequence[str]) -> list[str]:
    """One URL or a list of them, as a non-empty list."""
    found = [urls] if isinstance(urls, str) else list(urls)
    if not found:
        raise ValueError("no broker URL configured (broker.urls)")
    return found


def default_group_size(urls: Sequence[str], configured: int | None) -> int | None:
    """The initial group size of new quorum queues: as configured, else 3 on a cluster of
    three or more nodes, else None (the broker's default: every node)."""
    if configured is not None:
        return configured
    return DEFAULT_GROUP_SIZE if len(urls) >= DEFAULT_GROUP_SIZE else None


class QuorumChannel(RobustChannel):
    """A robust channel that declares quorum queues with the connection's initial group
    size (when it has one)."""

    async def declare_queue(  # type: ignore[override]
        self, name: str | None = None, *, arguments: dict[str, Any] | None = None, **kw: Any
    ) -> AbstractRobustQueue:
        size = getattr(self._connection, "quorum_group_size", None)
        wanted = dict(arguments or {})
        if (
            size is None
            or kw.get("passive")
            or wanted.get("x-queue-type") != "quorum"
            or GROUP_SIZE in wanted
        ):
            return await super().declare_queue(name, arguments=arguments, **kw)
        wanted[GROUP_SIZE] = size
        try:
            return await super().declare_queue(name, arguments=wanted, **kw)
        except ChannelPreconditionFailed as exc:
            if GROUP_SIZE not in str(exc):
                raise
            # it exists with another size: the channel was closed and is restored; use
            # the queue as it is (declared passively: its other arguments were checked
            # when it was created)
            log.warning(
                "quorum queue exists with another initial group size; used as it is "
                "(`rabbitmq-queues grow` adds members)",
                queue=name,
                wanted=size,
            )
            await self._restored()
            return await super().declare_queue(name, passive=True)

    async def _restored(self, within: float = 30.0) -> None:
        """Wait until aio-pika has reopened this channel after a channel error (it does
        so from the close callback, after the error reached the caller)."""
        reopened = asyncio.Event()

        def on_reopen(*_: Any) -> None:
            reopened.set()

        self.reopen_callbacks.add(on_reopen)
        try:
            if self.is_closed:
                async with asyncio.timeout(within):
                    await reopened.wait()
        finally:
            self.reopen_callbacks.discard(on_reopen)
        await self.ready()


class ClusterConnection(RobustConnection):
    """A robust connection to whichever node of ``urls`` answers (see the module doc)."""

    CHANNEL_CLASS = QuorumChannel

    def __init__(
        self,
        urls: Sequence[str],
        *,
        quorum_group_size: int | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        **kwargs: Any,
    ) -> None:
        self.urls = [URL(u) for u in as_list(urls)]
        super().__init__(self.urls[0], loop=loop, **kwargs)
        self.quorum_group_size = quorum_group_size
        # each process starts at a node of its own: connections (and the leaders of the
        # quorum queues they declare, placed client-local) spread over the cluster
        self._next = random.randrange(len(self.urls))

    @property
    def node(self) -> str:
        """The node (URL, password redacted) of the current or last connection."""
        return redact_url(str(self.url))

    async def _attempt(self) -> None:
        """One connection attempt: each node once, from the one after the last used."""
        base = getattr(RobustConnection, _ATTEMPT)
        last: BaseException | None = None
        for _ in range(len(self.urls)):
            self.url = self.urls[self._next % len(self.urls)]
            self._next += 1
            try:
                await base(self)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                last = exc
                log.warning("broker node not available", node=self.node, error=repr(exc)[:300])
                continue
            log.info("connected to broker node", node=self.node, nodes=len(self.urls))
            return
        assert last is not None
        raise last


# aio-pika calls this name-mangled method for every attempt (first connect and reconnects)
setattr(ClusterConnection, _ATTEMPT, ClusterConnection._attempt)


async def connect_robust(
    urls: str | Sequence[str],
    *,
    name: str,
    quorum_group_size: int | None = None,
    connect_timeout: TimeoutType = 10.0,
    reconnect_seconds: float = 5.0,
) -> ClusterConnection:
    """A :class:`ClusterConnection`, connected (to the first node that answers)."""
    connection = ClusterConnection(
        as_list(urls),
        quorum_group_size=quorum_group_size,
        client_properties={"connection_name": name},
        reconnect_interval=reconnect_seconds,
    )
    await connection.connect(timeout=connect_timeout)
    return connection


async def connect_first(
    urls: str | Sequence[str], *, connect_timeout: float = 10.0, **kwargs: Any
) -> AbstractConnection:
    """A plain connection to the first node of ``urls`` that answers (tools, one-off
    actions); the last node's error when none does."""
    last: BaseException | None = None
    quiet = logging.getLogger("aiormq.connection")
    candidates = as_list(urls)
    for i, url in enumerate(candidates):
        level = quiet.level
        if i < len(candidates) - 1:
            quiet.setLevel(logging.CRITICAL)  # the next node may answer: no error log yet
        try:
            connection: AbstractConnection = await aio_pika.connect(
                url, timeout=connect_timeout, **kwargs
            )
            return connection
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            last = exc
            log.warning("broker node not available", node=redact_url(url), error=repr(exc)[:300])
        finally:
            quiet.setLevel(level)
    assert last is not None
    raise last


def nodes(urls: str | Sequence[str]) -> list[str]:
    """The nodes of ``urls`` for logs (passwords redacted)."""
    return [redact_url(u) for u in as_list(urls)]


__all__ = [
    "DEFAULT_GROUP_SIZE",
    "GROUP_SIZE",
    "ClusterConnection",
    "QuorumChannel",
    "as_list",
    "connect_first",
    "connect_robust",
    "default_group_size",
    "nodes",
]
