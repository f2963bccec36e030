"""Outage or failure of the message? The one classification every stage (and adapter) uses.

An outage of PostgreSQL or RabbitMQ — connection refused or lost, a publish not confirmed
or refused (``Basic.Nack``), the server shutting down, starting up or read-only after a
failover — is not a property of the message: the work waits for the dependency
(docs/reliability.md) and is never counted toward a message's delivery limit.
"""

from __future__ import annotations

import asyncpg
from aiormq.exceptions import AMQPError, ChannelInvalidStateError, DeliveryError
from pamqp.commands import Basic

_FILESYSTEM_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _outage(exc: BaseException) -> bool:
    if isinstance(exc, DeliveryError):
        # Basic.Nack: the broker refused to take the message (queue full, node lost);
        # Basic.Return (unroutable) is a property of the message
        return isinstance(exc.frame, Basic.Nack)
    if isinstance(exc, OSError):  # incl. ConnectionError, TimeoutError, AMQPConnectionError
        return not isinstance(exc, _FILESYSTEM_ERRORS)
    if isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,  # incl. "connection does not exist"
            asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up
            asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
            asyncpg.exceptions.ReadOnlySQLTransactionError,  # a standby, mid-failover
            # a multi-host URL whose hosts all answer but none takes writes yet (failover)
            asyncpg.exceptions.TargetServerAttributeNotMatched,
            ChannelInvalidStateError,
        ),
    ):
        return True
    if isinstance(exc, asyncpg.InterfaceError):  # "connection is closed", "pool is closing"
        return "clos" in str(exc)
    return False


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is an outage of the database or the
    broker rather than a failure of the message itself."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _outage(current):
            return True
        current = current.__cause__
    return False


def describe_outage(exc: BaseException) -> str:
    """ "database" or "broker", for logs, metrics and /readyz."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(
            current,
            (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.exceptions.TargetServerAttributeNotMatched,
            ),
        ):
            return "database"
        if isinstance(current, (AMQPError, ChannelInvalidStateError)):
            return "broker"
        current = current.__cause__
    return "database or broker"
