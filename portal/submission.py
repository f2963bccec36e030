"""Submitting and validating from the portal: streamed, size-limited uploads; submissions
go through the one intake as koppelvlak ``portal``; validate-only (the Aansluit Suite)
gives the findings the validation stage would record, without submitting."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import BodyPartReader, MultipartReader
from prometheus_client import Counter

from digipoort.envelope import Aanlevering, Document, Identiteit
from digipoort.intake import IntakeRefused, IntakeUnavailable
from digipoort.payloads import PayloadStore, PayloadTooLarge
from portal.context import Context
from portal.identity import Caller
from portal.middleware import CSRF_FIELD, Csrf
from portal.problems import Problem, clean_text
from portal.validation import UNAVAILABLE
from validators.findings import REFUSING

log = structlog.get_logger(__name__)

KOPPELVLAK = "portal"
_FIELD_LIMIT = 4096
_MAX_FIELDS = 20
_MEMORY_LIMIT = 256 * 1024  # larger uploads stream to the payload store

UPLOADS_REFUSED = Counter(
    "digipoort_portal_uploads_refused_total",
    "Portal uploads (submit, validate) refused while reading the form, by reason.",
    ["reason"],
)


def _refused(caller: Caller, status: int, reason: str, detail: str, **info: Any) -> Problem:
    """The refusal of an upload: counted, logged (no content), answered 413/400."""
    UPLOADS_REFUSED.labels(reason).inc()
    log.warning("portal.upload_refused", oin=caller.oin, reason=reason, **info)
    return Problem(status, reason, detail)


@dataclass
class Upload:
    """A parsed portal upload form."""

    fields: dict[str, str]
    document: Document | None
    bijlagen: list[Document]


def _safe_name(raw: str | None) -> str:
    name = (raw or "document").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return "".join(c for c in name if c.isprintable())[:200] or "document"


async def _read_file(
    part: BodyPartReader, store: PayloadStore, limit: int, in_memory: bool, caller: Caller
) -> Document:
    """One uploaded file: in memory up to 256 KiB (or whole for validate-only, which
    needs the bytes), beyond that streamed to the payload store chunk by chunk; never
    more than ``limit`` bytes."""
    mime = (part.headers.get("Content-Type") or "application/octet-stream")[:100]
    name = _safe_name(part.filename)
    buffer = bytearray()
    writer = None
    total = 0

    def too_large() -> Problem:
        return _refused(
            caller,
            413,
            "too-large",
            f"{name}: groter dan {limit / 1048576:.1f} MiB ({limit} bytes),"
            " het maximum per bestand",
            field=part.name,
            limit=limit,
        )

    try:
        while chunk := await part.read_chunk(64 * 1024):
            total += len(chunk)
            if total > limit:
                raise too_large()
            if writer is None:
                buffer += chunk
                if len(buffer) > _MEMORY_LIMIT and not in_memory:
                    writer = store.writer(limit)
                    await writer.write(bytes(buffer))
                    buffer.clear()
            else:
                await writer.write(chunk)
        if writer is not None:
            blob = await writer.commit()
            writer = None
            return Document(mime, name, blob=blob)
        return Document(mime, name, content=bytes(buffer))
    except PayloadTooLarge:
        raise too_large() from None
    finally:
        if writer is not None:
            await writer.abort()


async def _read_field(part: BodyPartReader, caller: Caller) -> bytes:
    """A text field of the form, at most ``_FIELD_LIMIT`` bytes (never read whole first)."""
    raw = bytearray()
    while chunk := await part.read_chunk(_FIELD_LIMIT + 1):
        raw += chunk
        if len(raw) > _FIELD_LIMIT:
            raise _refused(
                caller, 413, "too-large", "formulierveld te groot", field=(part.name or "")[:40]
            )
    return bytes(part.decode(raw))


async def read_upload(
    reader: MultipartReader,
    ctx: Context,
    caller: Caller,
    csrf: Csrf,
    header_token: str | None,
    *,
    in_memory: bool = False,
) -> Upload:
    """Read a multipart form: the CSRF token (header, or the first field), text fields,
    ``document`` and up to ``portal.max_bijlagen`` ``bijlage`` files, each limited to
    ``portal.max_upload_bytes``."""
    cfg = ctx.settings.portal
    fields: dict[str, str] = {}
    document: Document | None = None
    bijlagen: list[Document] = []
    checked = False
    if header_token is not None:
        csrf.check(caller, header_token)
        checked = True
    while True:
        part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise Problem(400, "bad-form", "geneste multipart wordt niet ondersteund")
        name = part.name or ""
        if not checked:
            if name != CSRF_FIELD:
                csrf.check(caller, None)
            csrf.check(caller, (await _read_field(part, caller))[:100].decode("ascii", "replace"))
            checked = True
            continue
        if name in ("document", "bijlage"):
            if name == "bijlage" and len(bijlagen) >= cfg.max_bijlagen:
                raise _refused(
                    caller, 413, "too-many-bijlagen", f"maximaal {cfg.max_bijlagen} bijlagen"
                )
            if name == "document" and document is not None:
                raise _refused(caller, 400, "bad-form", "één document per aanlevering")
            doc = await _read_file(part, ctx.store, cfg.max_upload_bytes, in_memory, caller)
            if name == "document":
                document = doc
            elif doc.size or doc.bestandsnaam != "document":
                bijlagen.append(doc)
            continue
        if len(fields) >= _MAX_FIELDS:
            raise _refused(caller, 413, "too-large", "te veel formuliervelden")
        value = await _read_field(part, caller)
        fields[name[:40]] = clean_text(name[:40], value.decode("utf-8", "replace").strip())
    if not checked:
        csrf.check(caller, None)
    return Upload(fields, document, bijlagen)


def catalogue(ctx: Context, caller: Caller) -> list[dict[str, Any]]:
    """Berichtsoorten the caller may send, with recipients, koppelvlakken and limits."""
    registry = ctx.registry
    result = []
    for name in registry.berichtsoorten_for_sender(caller.oin):
        soort = registry.berichtsoorten[name]
        result.append(
            {
                "berichtsoort": name,
                "koppelvlakken": list(soort.koppelvlakken),
                "via_portal": KOPPELVLAK in soort.koppelvlakken,
                "recipients": [
                    {
                        "oin": oin,
                        "name": registry.participants[oin].name
                        if oin in registry.participants
                        else oin,
                    }
                    for oin in soort.recipients
                ],
                "max_size": soort.max_size,
                "mime_types": list(soort.mime_types),
                "xml": soort.xml,
                "schema": soort.xsd,
            }
        )
    return result


def _berichtsoort(ctx: Context, caller: Caller, name: str | None) -> str:
    if not name or name not in ctx.registry.berichtsoorten_for_sender(caller.oin):
        raise Problem(422, "berichtsoort", "kies een berichtsoort die u mag aanleveren")
    return name


async def validate_only(ctx: Context, caller: Caller, upload: Upload) -> list[dict[str, Any]]:
    """The findings for a document, exactly as the validation stage would record them."""
    name = _berichtsoort(ctx, caller, upload.fields.get("berichtsoort"))
    doc = upload.document
    if doc is None or doc.content is None:
        raise Problem(422, "document", "kies een document")
    soort = ctx.registry.berichtsoorten[name]
    try:
        findings = await ctx.validator.findings_for(soort, doc.content, doc.mime_type)
    except UNAVAILABLE as exc:
        log.error("portal.schema_unavailable", berichtsoort=name, error=str(exc))
        raise Problem(
            503, "schema-unavailable", "het schema van deze berichtsoort ontbreekt"
        ) from None
    log.info("portal.validated", oin=caller.oin, berichtsoort=name, findings=len(findings))
    return [f.as_json() for f in findings]


def is_valid(findings: list[dict[str, Any]]) -> bool:
    """No refusing finding (warnings and infos do not refuse)."""
    return not any(f["severity"] in REFUSING for f in findings)


async def submit(ctx: Context, caller: Caller, upload: Upload) -> dict[str, Any]:
    """Aanleveren through the one intake, koppelvlak ``portal``."""
    name = _berichtsoort(ctx, caller, upload.fields.get("berichtsoort"))
    if upload.document is None or upload.document.size == 0:
        raise Problem(422, "document", "kies een document")
    if ctx.intake is None:
        raise Problem(503, "intake-unavailable", "aanleveren is in dit proces niet actief")
    kenmerk = (upload.fields.get("aanleverkenmerk") or "").strip()[:200] or None
    aanlevering = Aanlevering(
        sender_oin=caller.oin,
        koppelvlak=KOPPELVLAK,
        berichtsoort=name,
        belanghebbende=Identiteit(caller.oin, "OIN"),
        rol_belanghebbende="Bedrijf",
        inhoud=upload.document,
        bijlagen=tuple(upload.bijlagen),
        aanleverkenmerk=kenmerk,
    )
    try:
        accepted = await ctx.intake.aanleveren(aanlevering)
    except IntakeRefused as exc:
        raise Problem(422, "refused", exc.melding, extra={"reden": exc.reden}) from None
    except IntakeUnavailable:
        raise Problem(503, "intake-unavailable", "aanleveren tijdelijk niet mogelijk") from None
    return {
        "kenmerk": str(accepted.kenmerk),
        "tijdstempel": accepted.tijdstempel_aangeleverd.isoformat(),
    }
