"""The ``Channel`` protocol: what every push channel of the deliverer implements.

``deliver(outgoing)`` → **receipt** | **retry** | **refuse**, designed from what the
``wus`` (AfleverService push) and ``smtp`` (relay to the recipient's MTA) channels do:

* **receipt** — the channel returns a :class:`Receipt`: the recipient's own evidence of
  the delivery (the signed afleverResponse; the MTA's final reply to DATA). A channel
  returns it only after :func:`archive_receipt` put it into the non-repudiation archive
  (docs/archive.md): a receipt the archive did not take is a *retry*, never a success.
  The deliverer then records 400 and closes the recipient's circuit breaker.
* **retry** — the channel raises :class:`Retry` (= :class:`DeliveryFailed`) with a short
  reason (no secrets) for ``statusdetails``: 420, the next attempt per the schedule
  (:mod:`routing.afleveren.schedule`), and one failure for the recipient's breaker
  (connection refused, time-out, TLS, a fault, an invalid or unarchived receipt, SMTP 4xx).
* **refuse** — the channel raises :class:`Refuse` (= :class:`DeliveryRefused`): the
  endpoint answered and refused for good (SMTP 5xx): 420 and 410 with its foutcode at
  once. The endpoint is up, so this is *not* a breaker failure.

A channel only moves bytes: the deliverer owns claims, statuses, the schedule and the
breaker. What a channel gets is an :class:`Outgoing`: the recipient, the envelope and its
documents as the recipient receives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable
from uuid import UUID

from lxml import etree

from digipoort.archive import Exchange
from digipoort.envelope import EnvelopeRecord
from digipoort.registry import Participant
from routing.aflever_body import RecipientDocument, document_element

__all__ = [
    "FOUTCODE_REFUSED",
    "Channel",
    "DeliveryFailed",
    "DeliveryRefused",
    "Outgoing",
    "Receipt",
    "Refuse",
    "Retry",
    "archive_receipt",
]

FOUTCODE_REFUSED = "AFS620"


class DeliveryFailed(Exception):
    """One push attempt failed; ``reason`` goes into statusdetails (no secrets)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason[:500]


class DeliveryRefused(DeliveryFailed):
    """The recipient's endpoint refused the delivery permanently (e.g. SMTP 5xx): no
    more attempts; 410 with ``foutcode`` at once."""

    def __init__(self, reason: str, foutcode: str = FOUTCODE_REFUSED) -> None:
        super().__init__(reason)
        self.foutcode = foutcode


#: The protocol's words for the two failure outcomes.
Retry = DeliveryFailed
Refuse = DeliveryRefused


@dataclass(frozen=True)
class Outgoing:
    """What a sender gets for one attempt: the recipient, the envelope and its documents
    as the recipient receives them (large ones as Grote Berichten references)."""

    participant: Participant
    record: EnvelopeRecord
    documents: list[RecipientDocument]
    attempt: int

    @property
    def kenmerk(self) -> UUID:
        return self.record.kenmerk

    def aflever_request(self) -> bytes:
        """The afleverRequest document (the same a queue recipient receives)."""
        element = document_element(self.record, self.documents)
        return etree.tostring(element, xml_declaration=True, encoding="UTF-8")


@dataclass(frozen=True)
class Receipt:
    """The recipient's evidence of one delivery, as archived: ``kind`` is the archive
    record kind (``aflever.wus.receipt``, ``aflever.smtp.reply``), ``evidence`` the bytes
    the recipient sent, ``facts`` what identifies our side of the exchange."""

    kind: str
    evidence: bytes
    facts: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class Channel(Protocol):
    """One push channel (``deliveries.channel`` = the recipient's ``aflever.kind``)."""

    async def deliver(self, out: Outgoing) -> Receipt:
        """Deliver one envelope: return the archived :class:`Receipt`, or raise
        :class:`Retry` / :class:`Refuse`."""
        ...


async def archive_receipt(
    exchange: Exchange, receipt: Receipt, *, oin: str, kenmerk: UUID, unavailable: str
) -> Receipt:
    """The non-repudiation hook: the receipt into the archive before the delivery counts;
    if the archive does not take it, :class:`Retry` with ``unavailable`` as reason."""
    if not await exchange.received(
        receipt.kind, receipt.evidence, oin=oin, kenmerk=kenmerk, **receipt.facts
    ):
        raise DeliveryFailed(unavailable)
    return receipt
