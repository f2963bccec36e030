"""The ``ftp`` channel: ``/out/``, status files and deliveries rendered from PostgreSQL on
LIST/RETR. A pull channel: the FTP session (``adapters/ftp/session.py``) serves it when
the recipient collects, so it has no ``deliver`` and no receipt (docs/archive.md).

* ``<aanleverkenmerk>.<kenmerk>.status.xml`` for every envelope the participant submitted
  over FTP: the status history as an ``ArrayOfStatusResultaat`` (koppelvlak XSD), in
  causal order (statuses.id), so it reflects each status as soon as it is committed; a
  recipient's status names it in a first ``ontvanger: <OIN>`` line of ``statusdetails``
  (as over WUS).
* ``<kenmerk>.afleverRequest.xml`` for every delivery addressed to the participant
  (``deliveries.recipient_oin``): the same afleverRequest document a queue subscriber
  receives (large documents as Grote Berichten references).

Rendering is a pure function (:func:`render_statuses`); the queries are below it. A file
the participant deletes is recorded in ``ftp_deleted`` and never listed again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg
from lxml import etree

from digipoort.config import GroteBerichtenConfig
from digipoort.envelopestore import fetch_envelopes
from digipoort.payloads import PayloadStore
from digipoort.status import Status
from routing.aflever_body import aflever_body

NS = "http://logius.nl/digipoort/koppelvlakservices/1.2/"
_Q = "{%s}" % NS  # noqa: UP031
STATUS_SUFFIX = ".status.xml"
AFLEVER_SUFFIX = ".afleverRequest.xml"
#: At most this many envelopes / deliveries are listed (newest first).
MAX_LISTED = 1000


def iso(ts: datetime) -> str:
    return ts.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_file_name(aanleverkenmerk: str | None, kenmerk: UUID) -> str:
    return f"{aanleverkenmerk or 'bericht'}.{kenmerk}{STATUS_SUFFIX}"


def render_statuses(belanghebbende: tuple[str, str], statuses: Sequence[Status]) -> bytes:
    """The history as ``ArrayOfStatusResultaat`` (StatusResultaat elements, koppelvlak 1.2)."""
    root = etree.Element(_Q + "ArrayOfStatusResultaat", nsmap={None: NS})  # type: ignore[dict-item]
    for s in statuses:
        item = etree.SubElement(root, _Q + "StatusResultaat")
        etree.SubElement(item, _Q + "kenmerk").text = str(s.kenmerk)
        ident = etree.SubElement(item, _Q + "identiteitBelanghebbende")
        etree.SubElement(ident, _Q + "nummer").text = belanghebbende[0]
        etree.SubElement(ident, _Q + "type").text = belanghebbende[1]
        etree.SubElement(item, _Q + "statuscode").text = s.code
        etree.SubElement(item, _Q + "tijdstempelStatus").text = iso(s.tijdstempel)
        etree.SubElement(item, _Q + "statusomschrijving").text = s.omschrijving
        if s.foutcode:
            fout = etree.SubElement(item, _Q + "statusFoutcode")
            etree.SubElement(fout, _Q + "foutcode").text = s.foutcode
            etree.SubElement(fout, _Q + "foutbeschrijving").text = s.foutbeschrijving or ""
        # the recipient as over WUS: a first "ontvanger: <OIN>" line of statusdetails
        details = "\n".join(
            [*([f"ontvanger: {s.recipient_oin}"] if s.recipient_oin else []), s.details or ""]
        ).strip()
        if details:
            etree.SubElement(item, _Q + "statusdetails").text = details
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)


@dataclass(frozen=True)
class OutFile:
    name: str
    kenmerk: UUID
    kind: str  # "status" | "aflever"
    mtime: datetime


class Outbox:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: PayloadStore,
        oin: str,
        *,
        grote_berichten: GroteBerichtenConfig,
        public_url: str,
    ) -> None:
        self._pool = pool
        self._store = store
        self._oin = oin
        self._grote_berichten = grote_berichten
        self._public_url = public_url

    async def list(self) -> list[OutFile]:
        rows = await self._pool.fetch(
            "SELECT e.kenmerk, e.aanleverkenmerk,"
            " (SELECT max(tijdstempel) FROM statuses s WHERE s.kenmerk = e.kenmerk) AS mtime"
            " FROM envelopes e WHERE e.sender_oin = $1 AND e.koppelvlak = 'ftp'"
            " ORDER BY e.tijdstempel_aangeleverd DESC LIMIT $2",
            self._oin,
            MAX_LISTED,
        )
        files = [
            OutFile(
                status_file_name(r["aanleverkenmerk"], r["kenmerk"]),
                r["kenmerk"],
                "status",
                r["mtime"],
            )
            for r in rows
        ]
        deliveries = await self._pool.fetch(
            "SELECT d.kenmerk, d.updated_at FROM deliveries d WHERE d.recipient_oin = $1"
            " ORDER BY d.created_at DESC LIMIT $2",
            self._oin,
            MAX_LISTED,
        )
        files += [
            OutFile(f"{r['kenmerk']}{AFLEVER_SUFFIX}", r["kenmerk"], "aflever", r["updated_at"])
            for r in deliveries
        ]
        deleted = {
            r["name"]
            for r in await self._pool.fetch(
                "SELECT name FROM ftp_deleted WHERE oin = $1", self._oin
            )
        }
        return [f for f in files if f.name not in deleted]

    async def find(self, name: str) -> OutFile | None:
        for f in await self.list():
            if f.name == name:
                return f
        return None

    async def render(self, f: OutFile) -> bytes:
        if f.kind == "status":
            return await self._render_status(f.kenmerk)
        return await self._render_aflever(f.kenmerk)

    async def _render_status(self, kenmerk: UUID) -> bytes:
        env = await self._pool.fetchrow(
            "SELECT belanghebbende_nummer, belanghebbende_type FROM envelopes"
            " WHERE kenmerk = $1 AND sender_oin = $2",
            kenmerk,
            self._oin,
        )
        if env is None:
            raise FileNotFoundError(str(kenmerk))
        rows = await self._pool.fetch(
            "SELECT kenmerk, recipient_oin, code, tijdstempel, omschrijving, foutcode,"
            " foutbeschrijving, details FROM statuses WHERE kenmerk = $1 ORDER BY id",
            kenmerk,
        )
        statuses = [Status(**dict(r)) for r in rows]
        return render_statuses((env["belanghebbende_nummer"], env["belanghebbende_type"]), statuses)

    async def _render_aflever(self, kenmerk: UUID) -> bytes:
        ok = await self._pool.fetchval(
            "SELECT 1 FROM deliveries WHERE kenmerk = $1 AND recipient_oin = $2",
            kenmerk,
            self._oin,
        )
        if not ok:
            raise FileNotFoundError(str(kenmerk))
        record = (await fetch_envelopes(self._pool, [kenmerk]))[kenmerk]
        # large documents as Grote Berichten references, as every other channel
        return await aflever_body(
            self._pool,
            self._store,
            record,
            grote_berichten=self._grote_berichten,
            public_url=self._public_url,
        )

    async def delete(self, name: str) -> None:
        await self._pool.execute(
            "INSERT INTO ftp_deleted (oin, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            self._oin,
            name,
        )
