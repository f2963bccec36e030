"""The Grote Berichten download endpoint: ``GET /grote-berichten/<kenmerk>/<seq>``.

Served on the WUS HTTPS port (mutual TLS, the same PKI as everywhere). Only a recipient
of that envelope (a row in ``deliveries``) may fetch. Streams from the payload store with
``Content-Length``, a strong ``ETag`` (the SHA-256) and single byte ranges (206), so a
broken download resumes; anything else in ``Range`` is a 416, never a crash. An expired
reference answers 410 Gone. Every fetch is logged and counted; the first complete fetch
by a recipient is recorded in the envelope's history (status 402).
"""

from __future__ import annotations

import re
from typing import Final
from uuid import UUID

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import Counter

from digipoort.payloads import PayloadStore
from digipoort.pki import CertificateRejected, CertificateVerifier, peer_certificate
from digipoort.status import Status
from digipoort.statusstore import write_statuses
from routing.grote_berichten import RangeNotSatisfiable, parse_range

log = structlog.get_logger(__name__)

PATH = "/grote-berichten/{kenmerk}/{seq}"
#: Documents of one envelope are numbered 0..MAX_SEQ (``gb_references.seq`` is a smallint).
MAX_SEQ: Final = 32767
_SEQ: Final = re.compile(r"[0-9]{1,5}")
FETCHES = Counter(
    "digipoort_grote_berichten_fetches_total",
    "Grote Berichten download requests, by outcome.",
    ["outcome"],
)
FETCHED_BYTES = Counter(
    "digipoort_grote_berichten_bytes_total", "Bytes served by the Grote Berichten endpoint."
)


def parse_reference_path(kenmerk: str, seq: str) -> tuple[UUID, int] | None:
    """(kenmerk, seq) of a download path; None for anything that names no document: a
    malformed kenmerk, a seq that is not ASCII digits or beyond ``smallint``."""
    if not _SEQ.fullmatch(seq) or int(seq) > MAX_SEQ:
        return None
    try:
        return UUID(kenmerk), int(seq)
    except ValueError:
        return None


class Download:
    def __init__(
        self, pool: asyncpg.Pool, store: PayloadStore, verifier: CertificateVerifier
    ) -> None:
        self._pool = pool
        self._store = store
        self._verifier = verifier

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("GET", PATH, self.handle)
        app.router.add_route("HEAD", PATH, self.handle)

    def _caller(self, request: web.Request) -> str | None:
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        if cert is None:
            return None
        try:
            return self._verifier.verify(cert).oin
        except CertificateRejected:
            return None

    def _refuse(self, status: int, outcome: str, text: str) -> web.Response:
        FETCHES.labels(outcome).inc()
        return web.Response(status=status, text=text + "\n")

    async def handle(self, request: web.Request) -> web.StreamResponse:
        oin = self._caller(request)
        if oin is None:
            log.info("grote berichten: unauthenticated fetch refused")
            return self._refuse(401, "unauthenticated", "client certificate required")
        reference = parse_reference_path(request.match_info["kenmerk"], request.match_info["seq"])
        if reference is None:
            log.info("grote berichten: no such reference", path=request.path[:200])
            return self._refuse(404, "not_found", "no such reference")
        kenmerk, seq = reference
        row = await self._pool.fetchrow(
            "SELECT r.sha256, r.size, r.expires_at < now() AS expired,"
            " EXISTS (SELECT 1 FROM deliveries d WHERE d.kenmerk = r.kenmerk"
            "         AND d.recipient_oin = $3) AS allowed"
            " FROM gb_references r WHERE r.kenmerk = $1 AND r.seq = $2",
            kenmerk,
            seq,
            oin,
        )
        bound = log.bind(kenmerk=str(kenmerk), seq=seq, recipient=oin)
        if row is None or not row["allowed"]:
            # the same answer for "does not exist" and "not yours": nothing leaks
            bound.warning("grote berichten: fetch refused", reason="not a recipient")
            return self._refuse(404, "forbidden", "no such reference")
        if row["expired"]:
            bound.info("grote berichten: reference expired")
            return self._refuse(410, "expired", "reference expired")
        size, sha = int(row["size"]), str(row["sha256"])
        etag = f'"{sha}"'
        if_range = request.headers.get("If-Range")
        range_header = request.headers.get("Range") if if_range in (None, etag) else None
        try:
            span = parse_range(range_header, size)
        except RangeNotSatisfiable as exc:
            bound.info("grote berichten: range not satisfiable", range=range_header, error=str(exc))
            FETCHES.labels("range_not_satisfiable").inc()
            return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
        start, end = span if span is not None else (0, size)
        headers = {
            "ETag": etag,
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Length": str(end - start),
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        response = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
        await response.prepare(request)
        sent = 0
        if request.method == "GET":
            async for chunk in self._store.stream(sha, start, end):
                await response.write(chunk)
                sent += len(chunk)
        await response.write_eof()
        FETCHED_BYTES.inc(sent)
        FETCHES.labels("partial" if span is not None else "complete").inc()
        complete = request.method == "GET" and end == size and sent == end - start
        await self._record(kenmerk, seq, oin, sent, complete)
        bound.info("grote berichten: fetch", start=start, end=end, bytes=sent, complete=complete)
        return response

    async def _record(
        self, kenmerk: UUID, seq: int, oin: str, sent: int, reached_end: bool
    ) -> None:
        await record_fetch(self._pool, kenmerk, seq, oin, sent, reached_end)


async def record_fetch(
    pool: asyncpg.Pool, kenmerk: UUID, seq: int, oin: str, sent: int, reached_end: bool
) -> None:
    """One fetch of a document delivered by reference, in ``gb_fetches``; the first
    complete fetch by a recipient is recorded in the history (402). Every download path
    (this endpoint and the portal's download) records through this function."""
    async with pool.acquire() as conn, conn.transaction():
        first = await conn.fetchval(
            "INSERT INTO gb_fetches (kenmerk, seq, recipient_oin, requests, bytes_sent,"
            " first_complete_at) VALUES ($1, $2, $3, 1, $4, CASE WHEN $5 THEN now() END)"
            " ON CONFLICT (kenmerk, seq, recipient_oin) DO UPDATE SET"
            " requests = gb_fetches.requests + 1,"
            " bytes_sent = gb_fetches.bytes_sent + $4, last_fetch_at = now(),"
            " first_complete_at = coalesce(gb_fetches.first_complete_at,"
            "   CASE WHEN $5 THEN now() END)"
            " RETURNING first_complete_at IS NOT NULL AND requests >= 1",
            kenmerk,
            seq,
            oin,
            sent,
            reached_end,
        )
        if first and reached_end:
            await write_statuses(
                conn,
                [Status(kenmerk, "402", recipient_oin=oin, details=f"document {seq} opgehaald")],
            )
