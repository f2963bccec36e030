"""zetStatus over WUS: a recipient reports its own processing status for a kenmerk.

Endpoint ``/wus/2.0/statusservice/1.2`` (this model's choice: no WSDL is published for
it; ``specs/wsdl/statusservice-1.2.wsdl`` is ours), action
``http://logius.nl/digipoort/wus/2.0/statusservice/1.2/StatusService/zetStatusRequest``.
The request passes the same pipeline as every WUS request (mutual TLS, signature, OIN);
the document rules and the "only a recipient of that kenmerk" rule are those of the AMQP
variant (``routing/statusreports.py``): codes 500–999 only. Unknown kenmerk and someone
else's kenmerk get the same zetStatusFault: existence never leaks.
"""

from __future__ import annotations

from typing import Final

import asyncpg
from lxml import etree

from adapters.wus.codes import Refusal
from adapters.wus.messages import zet_status_response
from digipoort import metrics
from digipoort.wus.soap import WusOperation, operations_by_action
from routing.statusreports import Refused, parse_zet_status, record_zet_status

STATUSSERVICE_NS: Final = "http://logius.nl/digipoort/wus/2.0/statusservice/1.2/"
ZET_STATUS: Final = WusOperation(
    STATUSSERVICE_NS,
    "StatusService",
    "zetStatus",
    "zetStatusRequest",
    "zetStatusResponse",
    "zetStatusFault",
)
#: Operations served by the WUS endpoints beyond ``soap.OPERATIONS``.
EXTRA_OPERATIONS: Final = operations_by_action([ZET_STATUS])

_NOT_VISIBLE: Final = "onbekend kenmerk"


def _refusal(exc: Refused) -> Refusal:
    if exc.reason in ("unknown_kenmerk", "not_a_recipient"):
        return Refusal("authorisation", exc.reason, _NOT_VISIBLE)
    return Refusal("malformed", exc.reason, exc.detail)


async def zet_status(
    pool: asyncpg.Pool, caller_oin: str, payload: etree._Element
) -> etree._Element:
    """Record the report; the zetStatusResponse, or raise :class:`Refusal`."""
    try:
        report = parse_zet_status(etree.tostring(payload))
        await record_zet_status(pool, caller_oin, report)
    except Refused as exc:
        metrics.STATUS_REPORTS.labels("refused", exc.reason).inc()
        raise _refusal(exc) from None
    metrics.STATUS_REPORTS.labels("accepted", "").inc()
    metrics.STATUSES.labels(report.statuscode).inc()
    return zet_status_response(str(report.kenmerk), report.statuscode)
