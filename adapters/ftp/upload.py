"""Uploads over FTP: ``STOR`` / ``APPE`` to ``/in/<berichtsoort>/<file>`` (with ``REST``,
``ALLO`` and ``SITE MIME``), streamed into a partial upload, then handed to intake.

Order for one upload: the name and the berichtsoort are checked and intake's precheck runs
*before* the 150; the bytes stream into the partial area within the berichtsoort's size
limit and the account quota; only the peer's TLS ``close_notify`` ends an upload (anything
else keeps the partial for a resume with ``REST``); then the archive records what was
received (docs/archive.md), the partial is promoted into the payload store and
:meth:`digipoort.intake.Intake.aanleveren` runs. Invariant: the ``226`` carrying the
kenmerk is sent only after that durable accept and after the archive recorded it; every
other outcome is a refusal saying that nothing was submitted, or keeping the partial.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from pathlib import Path

from adapters.ftp import metrics
from adapters.ftp.commands import parse_allo
from adapters.ftp.datachannel import DataChannel
from adapters.ftp.partials import LimitExceeded, Upload, promote
from adapters.ftp.passive import close_quietly
from adapters.ftp.paths import (
    SNIFF_BYTES,
    PathRefused,
    check_upload_name,
    mime_type_for,
    parse_mime_type,
)
from adapters.ftp.sessionbase import READ_CHUNK
from adapters.ftp.tlsstream import Truncated
from digipoort.envelope import Aanlevering, Document, Identiteit, StoredBlob
from digipoort.intake import IntakeRefused, IntakeUnavailable


class UploadCommands(DataChannel):
    """SITE MIME, ALLO, STOR, APPE and the receive pipeline."""

    async def cmd_SITE(self, arg: str) -> None:
        sub, _, value = arg.partition(" ")
        if sub.upper() != "MIME":
            await self.refuse(504, "Only SITE MIME <type/subtype> is supported", "site_unsupported")
            return
        mime = parse_mime_type(value)
        if mime is None:
            await self.refuse(501, "SITE MIME needs type/subtype, e.g. text/xml", "mime_invalid")
            return
        self.mime = mime
        await self.send(200, f"MIME type of the next upload: {mime}")

    async def cmd_ALLO(self, arg: str) -> None:
        size = parse_allo(arg)
        if size is None:
            await self.refuse(501, "ALLO needs a size", "allo_invalid")
            return
        self.allo = size
        await self.send(200, f"ALLO {size} noted; the upload must have exactly this size")

    async def cmd_STOR(self, arg: str) -> None:
        await self._store(arg, append=False)

    async def cmd_APPE(self, arg: str) -> None:
        await self._store(arg, append=True)

    async def _store(self, arg: str, *, append: bool) -> None:
        rest, self.rest = self.rest, None
        allo, self.allo = self.allo, None
        mime, self.mime = self.mime, None
        if not await self.need_data():
            return
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        assert self.oin is not None
        if node.kind != "upload" or node.soort is None or node.name is None:
            parts = [p for p in path.split("/") if p]
            if len(parts) == 3 and parts[0] == "in":
                await self.refuse(
                    550,
                    "Berichtsoort not allowed for you over FTP",
                    "berichtsoort_not_allowed",
                    berichtsoort=parts[1][:80],
                )
            else:
                await self.refuse(553, "Uploads go to /in/<berichtsoort>/<file>", "upload_path")
            return
        try:
            check_upload_name(node.name)
        except PathRefused as exc:
            await self.refuse(553, exc.message, exc.reason)
            return
        aanlevering = self._aanlevering(
            node.soort, node.name, StoredBlob("0" * 64, 0), mime or mime_type_for(node.name)
        )
        try:
            self.s.intake.precheck(aanlevering)
        except IntakeRefused as exc:
            await self.refuse(550, exc.melding, exc.reden)
            return
        soort = self.s.registry.current.berichtsoorten[node.soort]
        limit = soort.max_size  # streamed to the payload store: the berichtsoort's limit
        if allo is not None and allo > limit:
            await self.refuse(552, f"Too large: at most {limit} bytes", "too_large")
            return
        key = (self.oin, path)
        if key in self.s.busy:
            await self.refuse(450, "An upload of this file is in progress", "busy")
            return
        area = self.area()
        existing = area.size(path) or 0
        offset = existing if append else (rest or 0)
        if offset > existing:
            await self.refuse(
                554, f"REST {offset} beyond the {existing} bytes received", "rest_beyond"
            )
            return
        usage = await asyncio.to_thread(area.usage)
        quota_left = self.s.config.quota_bytes - (usage - existing) - offset
        if quota_left <= 0:
            await self.refuse(552, "Quota exceeded", "quota")
            return
        upload = Upload(area, path, limit=limit, quota_left=quota_left)
        self.s.busy.add(key)
        if offset:
            metrics.RESUMES.inc()
        self.start_transfer(self._receive(upload, offset, node.soort, node.name, allo, mime, key))

    def _aanlevering(self, soort: str, name: str, blob: StoredBlob, mime: str) -> Aanlevering:
        assert self.oin is not None
        return Aanlevering(
            sender_oin=self.oin,
            koppelvlak="ftp",
            berichtsoort=soort,
            belanghebbende=Identiteit(self.oin, "OIN"),
            rol_belanghebbende="Bedrijf",
            inhoud=Document(mime, name, blob=blob),
            aanleverkenmerk=name,
        )

    async def _receive(
        self,
        upload: Upload,
        offset: int,
        soort: str,
        name: str,
        allo: int | None,
        mime: str | None,
        key: tuple[str, str],
    ) -> None:
        try:
            await self._receive_inner(upload, offset, soort, name, allo, mime)
        finally:
            self.s.busy.discard(key)

    async def _receive_inner(
        self,
        upload: Upload,
        offset: int,
        soort: str,
        name: str,
        allo: int | None,
        mime: str | None,
    ) -> None:
        await self.send(150, f"Ready to receive {name} at offset {offset}")
        stream = await self.accept_data()
        if stream is None:
            return
        log = self.log.bind(berichtsoort=soort, aanleverkenmerk=name)
        started = time.monotonic()
        try:
            await upload.open(offset)
            while True:
                async with asyncio.timeout(self.s.config.timeout_seconds):
                    chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    break
                await upload.write(chunk)
                metrics.UPLOAD_BYTES.inc(len(chunk))
        except LimitExceeded as exc:
            await upload.discard()  # before the client notices the cut-off
            stream.abort()
            metrics.UPLOADS.labels(exc.reason).inc()
            what = "Quota exceeded" if exc.reason == "quota" else "File too large"
            await self.refuse(552, f"{what} (limit {exc.limit} bytes); upload removed", exc.reason)
            return
        except (Truncated, ConnectionError, ssl.SSLError, TimeoutError) as exc:
            stream.abort()
            await upload.close(durable=False)
            metrics.UPLOADS.labels("incomplete").inc()
            await self.refuse(
                426,
                f"Upload incomplete ({upload.size} bytes kept); resume with REST {upload.size}",
                "incomplete",
                error=type(exc).__name__,
            )
            return
        except asyncio.CancelledError:
            stream.abort()
            with contextlib.suppress(Exception):
                await asyncio.shield(upload.close(durable=False))
            metrics.UPLOADS.labels("aborted").inc()
            raise
        await close_quietly(stream)
        await upload.close(durable=True)
        if allo is not None and upload.size != allo:
            metrics.UPLOADS.labels("size_mismatch").inc()
            await self.refuse(
                451,
                f"{upload.size} bytes received, ALLO announced {allo}; kept as partial",
                "size_mismatch",
            )
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        if mime is None:  # no SITE MIME: by the name, else by the first bytes
            head = await asyncio.to_thread(_head, upload.area.file(upload.vpath))
            mime = mime_type_for(name, head)
        archived = self.s.archive.exchange("ftp", transport=self.writer)  # docs/archive.md
        facts = {"berichtsoort": soort, "bestandsnaam": name, "size": upload.size,
                 "sha256": upload.sha256, "resumed_from": offset, "mime_type": mime}  # fmt: skip
        if not await archived.received("ftp.upload", b"", oin=self.oin, **facts):
            await self.refuse(451, "Gateway temporarily unavailable; send again", "archive")
            return
        blob = await promote(upload, self.s.store)
        try:
            accepted = await self.s.intake.aanleveren(self._aanlevering(soort, name, blob, mime))
        except IntakeRefused as exc:
            metrics.UPLOADS.labels("refused").inc()
            await self.refuse(
                552 if exc.reden == IntakeRefused.TE_GROOT else 550, exc.melding, exc.reden
            )
            return
        except IntakeUnavailable:
            metrics.UPLOADS.labels("error").inc()
            await self.refuse(
                451, "Gateway temporarily unavailable; send again", "intake_unavailable"
            )
            return
        metrics.UPLOADS.labels("accepted").inc()
        status = f"{name}.{accepted.kenmerk}.status.xml"
        done = f"Transfer complete; kenmerk {accepted.kenmerk}; status /out/{status}"
        kenmerk = str(accepted.kenmerk)
        if not await archived.answered("ftp.reply", b"226 " + done.encode(), kenmerk=kenmerk):
            await self.refuse(451, "Gateway temporarily unavailable; send again", "archive")
            return
        log.info(
            "ftp.upload_accepted",
            kenmerk=str(accepted.kenmerk),
            size=blob.size,
            sha256=blob.sha256,
            mime_type=mime,
            resumed_from=offset,
            mb_per_s=round((upload.size - offset) / elapsed / 1e6, 1),
        )
        await self.send(226, done)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(SNIFF_BYTES)
