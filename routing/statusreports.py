"""zetStatus over AMQP: recipients report their own processing status for a kenmerk.

A recipient publishes a ``zetStatusRequest`` document (koppelvlak XSD: kenmerk,
berichtkenmerk?, statuscode, tijdstempelStatus, statusFoutcode?, statusdetails?) to the
topic exchange ``digipoort.status`` (routing key: its OIN) with the AMQP ``user_id``
property set to its user name; RabbitMQ refuses a ``user_id`` that is not the
authenticated user, so the reporter cannot be forged.

The ``statusreports`` component consumes ``digipoort.statusreports``. A report is
accepted only when the reporter is a recipient of that kenmerk (a row in ``deliveries``)
and the code is a recipient's code (``5xx``–``9xx``); it is then written to the sender's
history with ``recipient_oin`` = the reporter. Anything else is refused: logged, counted
(``digipoort_status_reports_total{outcome="refused"}``) and dead-lettered to
``digipoort.dead`` with the reason in its headers — never silently dropped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog
from aio_pika.abc import AbstractIncomingMessage
from lxml import etree

from digipoort import metrics
from digipoort.app import Gateway
from digipoort.broker import STATUS_QUEUE, STATUS_REPORTS, Broker
from digipoort.provision import vhost_of
from digipoort.status import OMSCHRIJVINGEN
from digipoort.xmlsafe import XmlLimits, XmlRejected, parse
from routing.afleverrequest import NS, iso
from routing.provision import oin_of_user

log = structlog.get_logger(__name__)

_Q = "{%s}" % NS  # noqa: UP031
_LIMITS = XmlLimits(max_bytes=2 * 1024 * 1024, max_depth=8, max_elements=64)
_RECIPIENT_CODE = re.compile(r"[5-9][0-9]{2}")


class Refused(Exception):
    """A report the gateway does not accept; ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ZetStatus:
    kenmerk: UUID
    statuscode: str
    tijdstempel: datetime
    berichtkenmerk: str | None = None
    foutcode: str | None = None
    foutbeschrijving: str | None = None
    details: str | None = None


def _text(el: etree._Element, path: str) -> str | None:
    value = el.findtext(path)
    return value.strip() if value is not None else None


def parse_zet_status(body: bytes) -> ZetStatus:
    """Pure: a zetStatusRequest document, or :class:`Refused`."""
    try:
        root = parse(body, _LIMITS).getroot()
    except XmlRejected as exc:
        raise Refused("malformed", str(exc)) from None
    if root.tag != _Q + "zetStatusRequest":
        raise Refused("not_zetstatus", f"root element {root.tag}")
    raw_kenmerk = _text(root, _Q + "kenmerk") or ""
    try:
        kenmerk = UUID(raw_kenmerk)
    except ValueError:
        raise Refused("unknown_kenmerk", "kenmerk is not a Digipoort kenmerk") from None
    code = _text(root, _Q + "statuscode") or ""
    if not _RECIPIENT_CODE.fullmatch(code):
        raise Refused("code_not_allowed", f"statuscode {code[:20]!r} is not a recipient's code")
    try:
        ts = datetime.fromisoformat(_text(root, _Q + "tijdstempelStatus") or "")
    except ValueError:
        raise Refused("malformed", "tijdstempelStatus is not an xsd:dateTime") from None
    try:  # a valid xs:dateTime may lie outside years 1..9999 in UTC (database range)
        ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise Refused("malformed", "tijdstempelStatus is out of range") from None
    return ZetStatus(
        kenmerk=kenmerk,
        statuscode=code,
        tijdstempel=ts,
        berichtkenmerk=_text(root, _Q + "berichtkenmerk"),
        foutcode=_text(root, f"{_Q}statusFoutcode/{_Q}foutcode"),
        foutbeschrijving=_text(root, f"{_Q}statusFoutcode/{_Q}foutbeschrijving"),
        details=_text(root, _Q + "statusdetails"),
    )


def build_zet_status(
    kenmerk: UUID | str,
    statuscode: str,
    *,
    tijdstempel: datetime | None = None,
    berichtkenmerk: str | None = None,
    foutcode: str | None = None,
    foutbeschrijving: str | None = None,
    details: str | None = None,
) -> bytes:
    """A zetStatusRequest document (for recipients' software, tests and the docs)."""
    root = etree.Element(_Q + "zetStatusRequest", nsmap={None: NS})  # type: ignore[dict-item]
    etree.SubElement(root, _Q + "kenmerk").text = str(kenmerk)
    if berichtkenmerk is not None:
        etree.SubElement(root, _Q + "berichtkenmerk").text = berichtkenmerk
    etree.SubElement(root, _Q + "statuscode").text = statuscode
    etree.SubElement(root, _Q + "tijdstempelStatus").text = iso(tijdstempel or datetime.now(UTC))
    if foutcode is not None:
        fout = etree.SubElement(root, _Q + "statusFoutcode")
        etree.SubElement(fout, _Q + "foutcode").text = foutcode
        etree.SubElement(fout, _Q + "foutbeschrijving").text = foutbeschrijving or ""
    if details is not None:
        etree.SubElement(root, _Q + "statusdetails").text = details
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


_INSERT = """
INSERT INTO statuses (kenmerk, recipient_oin, code, tijdstempel, omschrijving,
                      foutcode, foutbeschrijving, details)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE NOT EXISTS (SELECT 1 FROM statuses WHERE kenmerk = $1 AND recipient_oin = $2
                  AND code = $3 AND tijdstempel = $4)
"""


async def record_zet_status(pool: asyncpg.Pool, oin: str, report: ZetStatus) -> None:
    """Record a recipient's report in the sender's history — only when ``oin`` is a
    recipient of that kenmerk (else :class:`Refused` ``not_a_recipient``). Shared by the
    AMQP and the WUS (``adapters/wus/zetstatus.py``) variants."""
    async with pool.acquire() as conn, conn.transaction():
        if not await conn.fetchval(
            "SELECT 1 FROM deliveries WHERE kenmerk = $1 AND recipient_oin = $2",
            report.kenmerk,
            oin,
        ):
            raise Refused("not_a_recipient", f"{oin} is not a recipient of {report.kenmerk}")
        await conn.execute(
            _INSERT,
            report.kenmerk,
            oin,
            report.statuscode,
            report.tijdstempel,
            OMSCHRIJVINGEN.get(report.statuscode, "Status gemeld door de uitvragende partij"),
            report.foutcode,
            report.foutbeschrijving,
            report.details,
        )


class StatusReports:
    def __init__(self, pool: asyncpg.Pool, broker: Broker, vhost: str) -> None:
        self._pool = pool
        self._broker = broker
        self._vhost = vhost

    async def accept(self, user_id: str | None, body: bytes) -> tuple[str, ZetStatus]:
        """Check and record one report; :class:`Refused` when not allowed."""
        if not user_id:
            raise Refused("no_user_id", "the AMQP user_id property is required")
        oin = oin_of_user(user_id, self._vhost)
        if oin is None:
            raise Refused("unknown_reporter", f"user {user_id[:100]!r} is not a recipient")
        report = parse_zet_status(body)
        await record_zet_status(self._pool, oin, report)
        return oin, report

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        bound = log.bind(reporter=message.user_id, message_id=message.message_id)
        try:
            oin, report = await self.accept(message.user_id, message.body)
        except Refused as exc:
            await self._refuse(message, exc, bound)
            return
        except Exception as exc:  # database trouble: try again later (delivery limit)
            bound.warning("status report not recorded; will be redelivered", error=repr(exc))
            await asyncio.sleep(1.0)  # back off: the delivery limit counts these
            await message.nack(requeue=True)
            return
        await message.ack()
        metrics.STATUS_REPORTS.labels("accepted", "").inc()
        metrics.STATUSES.labels(report.statuscode).inc()
        bound.info(
            "status report recorded",
            kenmerk=str(report.kenmerk),
            recipient=oin,
            code=report.statuscode,
        )

    async def _refuse(
        self, message: AbstractIncomingMessage, exc: Refused, bound: structlog.BoundLogger
    ) -> None:
        metrics.STATUS_REPORTS.labels("refused", exc.reason).inc()
        bound.warning("status report refused; dead-lettered", reason=exc.reason, detail=exc.detail)
        try:
            await self._broker.publish_dead(
                message.body,
                message_id=message.message_id,
                stage=STATUS_REPORTS,
                queue=STATUS_QUEUE,
                reason=f"{exc.reason}: {exc.detail} (user {message.user_id})",
                deliveries=1,
                content_type=message.content_type,
            )
        except Exception as pub_exc:
            bound.error("could not dead-letter a refused report", error=repr(pub_exc))
            await message.nack(requeue=True)  # the delivery limit dead-letters it
            return
        metrics.DEAD_LETTERED.labels(STATUS_REPORTS, exc.reason).inc()
        await message.ack()


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """The ``statusreports`` component."""
    assert gateway.pool is not None and gateway.broker is not None
    channel = await gateway.broker.channel(prefetch=64)
    queue = await gateway.broker.declare_status_queue(channel)
    reports = StatusReports(gateway.pool, gateway.broker, vhost_of(gateway.settings.broker.url))
    tag = await queue.consume(reports.on_message)

    async def stop() -> None:
        try:  # bounded: during a broker outage nobody answers (SIGTERM must still stop)
            async with asyncio.timeout(5):
                await queue.cancel(tag)
                await channel.close()
        except Exception as exc:
            log.debug("statusreports stop", error=repr(exc))

    return stop
