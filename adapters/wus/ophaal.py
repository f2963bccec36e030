"""The Ophaalservice (``/wus/2.0/ophaalservice/1.2``): recipients with aflever kind
``ophaal`` fetch their messages instead of receiving pushes.

Only the addressee sees a message: a delivery row (kenmerk, caller OIN) with channel
``ophaal``. Fetching (getBerichten*, not the *Lijst operations) marks the delivery
delivered and records 400 for it — once. The "Nieuwe" operations return only messages
not fetched before by the caller (``deliveries.delivered_at IS NULL``); concurrent
"Nieuwe" calls never return one message twice (rows are locked, SKIP LOCKED). A
BerichtResultaat carries the afleverRequest's fields (``routing/aflever_body.py``: large
documents as Grote Berichten references). Answers are bounded: at most
:data:`MAX_BERICHTEN` messages and about :data:`MAX_INLINE_BYTES` of inline content per
getBerichten* answer, :data:`MAX_LIJST` entries per list; the rest come with the next call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from uuid import UUID

import asyncpg
import structlog
from lxml import etree

from adapters.wus.codes import Refusal
from adapters.wus.messages import (
    KV,
    RequestInvalid,
    StatusVraag,
    _sub,
    _sub_identiteit,
    parse_query_fields,
)
from digipoort import metrics
from digipoort.config import Settings
from digipoort.envelope import Identiteit
from digipoort.envelopestore import fetch_envelopes
from digipoort.payloads import PayloadStore
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from digipoort.wus.soap import KOPPELVLAK_NS
from routing.aflever_body import aflever_document

log = structlog.get_logger(__name__)

OPERATIONS: Final = frozenset(
    {
        "getBerichten",
        "getNieuweBerichten",
        "getBerichtenLijst",
        "getNieuweBerichtenLijst",
        "getBerichtenKenmerk",
        "getNieuweBerichtenKenmerk",
    }
)
MAX_BERICHTEN: Final = 10
MAX_INLINE_BYTES: Final = 8 * 1024 * 1024
MAX_LIJST: Final = 1000

_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "Berichten": (
        "berichtsoort",
        "identiteitBelanghebbende",
        "autorisatieAdres",
        "tijdstempelVanaf",
        "tijdstempelTot",
    ),
    "BerichtenLijst": ("berichtsoort", "autorisatieAdres", "tijdstempelVanaf", "tijdstempelTot"),
    "BerichtenKenmerk": ("kenmerk", "autorisatieAdres", "tijdstempelVanaf", "tijdstempelTot"),
}
_REQUIRED: Final = frozenset({"identiteitBelanghebbende", "kenmerk"})


@dataclass(frozen=True)
class OphaalVraag(StatusVraag):
    """An Ophaalservice request: the same query fields as a status request."""

    @property
    def nieuw(self) -> bool:
        return self.operation.startswith("getNieuwe")

    @property
    def lijst(self) -> bool:
        return self.operation.endswith("Lijst")


def parse_ophaal_request(operation: str, payload: etree._Element) -> OphaalVraag:
    """Pure: an Ophaalservice request per the XSD, or :class:`RequestInvalid`."""
    if operation not in OPERATIONS or payload.tag != f"{KV}{operation}Request":
        raise RequestInvalid(f"Body does not hold a {operation}Request")
    fields = _FIELDS[operation.removeprefix("get").removeprefix("Nieuwe")]
    return OphaalVraag(operation=operation, **parse_query_fields(payload, fields, _REQUIRED))


_SELECT = """
SELECT d.kenmerk, e.berichtsoort, e.belanghebbende_nummer, e.belanghebbende_type
FROM deliveries d JOIN envelopes e ON e.kenmerk = d.kenmerk
WHERE d.recipient_oin = $1 AND d.channel = 'ophaal'
  AND ($2::text IS NULL OR e.berichtsoort = $2)
  AND ($3::text IS NULL OR (e.belanghebbende_nummer = $3 AND e.belanghebbende_type = $4))
  AND ($5::uuid IS NULL OR d.kenmerk = $5)
  AND ($6::timestamptz IS NULL OR e.tijdstempel_aangeleverd >= $6)
  AND ($7::timestamptz IS NULL OR e.tijdstempel_aangeleverd <= $7)
  AND (NOT $8 OR d.delivered_at IS NULL)
ORDER BY e.tijdstempel_aangeleverd, d.kenmerk
LIMIT $9
"""


class Ophaalservice:
    def __init__(self, pool: asyncpg.Pool, store: PayloadStore, settings: Settings) -> None:
        self._pool = pool
        self._store = store
        self._settings = settings

    async def handle(
        self, caller_oin: str, operation: str, payload: etree._Element
    ) -> etree._Element:
        try:
            vraag = parse_ophaal_request(operation, payload)
        except RequestInvalid as exc:
            raise Refusal("malformed", "xsd", str(exc)) from None
        kenmerk: UUID | None = None
        if vraag.kenmerk is not None:
            kenmerk = await self._visible(caller_oin, vraag.kenmerk)
        root = etree.Element(f"{KV}{operation}Response", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
        ret = _sub(root, f"{operation}Return", None)
        if vraag.lijst:
            rows = await self._pool.fetch(
                _SELECT, *self._args(caller_oin, vraag, kenmerk, MAX_LIJST)
            )
            for r in rows:
                item = _sub(ret, "BerichtLijstResultaat", None)
                _sub(item, "berichtsoort", r["berichtsoort"])
                _sub_identiteit(
                    item,
                    "identiteitBelanghebbende",
                    Identiteit(r["belanghebbende_nummer"], r["belanghebbende_type"]),
                )
                _sub(item, "kenmerk", str(r["kenmerk"]))
            return root
        for element in await self._fetch(caller_oin, vraag, kenmerk):
            ret.append(element)
        return root

    async def _visible(self, caller_oin: str, raw: str) -> UUID:
        """The kenmerk if it is an ophaal delivery to the caller; else the same refusal
        for unknown and someone else's (existence never leaks)."""
        try:
            kenmerk = UUID(raw)
        except ValueError:
            raise Refusal("authorisation", "kenmerk_not_visible", "onbekend kenmerk") from None
        if not await self._pool.fetchval(
            "SELECT 1 FROM deliveries WHERE kenmerk = $1 AND recipient_oin = $2"
            " AND channel = 'ophaal'",
            kenmerk,
            caller_oin,
        ):
            raise Refusal("authorisation", "kenmerk_not_visible", "onbekend kenmerk")
        return kenmerk

    def _args(
        self, oin: str, vraag: OphaalVraag, kenmerk: UUID | None, limit: int
    ) -> tuple[object, ...]:
        ident = vraag.belanghebbende
        return (
            oin,
            vraag.berichtsoort,
            ident.nummer if ident else None,
            ident.type if ident else None,
            kenmerk,
            vraag.vanaf,
            vraag.tot,
            vraag.nieuw,
            limit,
        )

    async def _fetch(
        self, oin: str, vraag: OphaalVraag, kenmerk: UUID | None
    ) -> list[etree._Element]:
        """Build the BerichtResultaten and mark them fetched, in one transaction."""
        query = _SELECT + (" FOR UPDATE OF d SKIP LOCKED" if vraag.nieuw else "")
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(query, *self._args(oin, vraag, kenmerk, MAX_BERICHTEN))
            records = await fetch_envelopes(conn, [r["kenmerk"] for r in rows])
            elements: list[etree._Element] = []
            taken: list[UUID] = []
            inline = 0
            for r in rows:
                record = records[r["kenmerk"]]
                size = sum(
                    d.size
                    for d in record.documents
                    if d.size <= self._settings.grote_berichten.threshold_bytes
                )
                if taken and inline + size > MAX_INLINE_BYTES:
                    break
                inline += size
                elements.append(
                    await aflever_document(
                        self._pool,
                        self._store,
                        record,
                        grote_berichten=self._settings.grote_berichten,
                        public_url=self._settings.wus.public_url,
                        tag="BerichtResultaat",
                    )
                )
                taken.append(record.kenmerk)
            first = await conn.fetch(
                "UPDATE deliveries SET state = 'delivered', delivered_at = now(),"
                " updated_at = now() WHERE recipient_oin = $1 AND kenmerk = ANY($2::uuid[])"
                " AND delivered_at IS NULL RETURNING kenmerk",
                oin,
                taken,
            )
            await write_statuses(
                conn, [Status(r["kenmerk"], "400", recipient_oin=oin) for r in first]
            )
        for r in first:
            metrics.DELIVERIES.labels(oin, "ophaal", "delivered").inc()
            metrics.MESSAGES_METERED.labels(oin, "afgeleverd").inc()
            log.info("ophaal: fetched", kenmerk=str(r["kenmerk"]), recipient=oin)
        metrics.STATUSES.labels("400").inc(len(first))
        return elements
