"""The REST API under ``/api/v1``: the same service functions as the pages, as JSON.
Errors are RFC 9457 problem details; lists use opaque keyset cursors (``cursor`` in,
``next_cursor`` out). The OpenAPI 3.1 document is at ``/api/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from portal import envelopes, metering, operator, recipients, submission
from portal.envelopes import Page
from portal.livestate import live_state
from portal.middleware import caller
from portal.openapi import document as openapi_document
from portal.problems import Problem, clean_text
from portal.web import (
    csrf_of,
    ctx_of,
    json_body,
    kenmerk_param,
    query,
    search_request,
    seq_param,
    upload_from,
)

PREFIX = "/api/v1"


def _page(page: Page) -> web.Response:
    return web.json_response({"items": page.items, "next_cursor": page.next_cursor})


async def me(request: web.Request) -> web.Response:
    c = caller(request)
    return web.json_response(
        {
            "oin": c.oin,
            "name": c.name,
            "operator": c.operator,
            "participant": c.participant,
            "csrf_token": csrf_of(request).token(c),
        }
    )


async def list_envelopes(request: web.Request) -> web.Response:
    return _page(await search_request(request, "sent"))


async def search(request: web.Request) -> web.Response:
    return _page(await search_request(request, "all"))


async def envelope(request: web.Request) -> web.Response:
    data = await envelopes.detail(ctx_of(request), caller(request), kenmerk_param(request))
    return web.json_response(data)


async def envelope_statuses(request: web.Request) -> web.Response:
    raw = request.query.get("after", "0") or "0"
    if not raw.isdigit() or len(raw) > 18:
        raise Problem(400, "bad-after", "after: een status-id")
    items = await envelopes.statuses(
        ctx_of(request), caller(request), kenmerk_param(request), after_id=int(raw)
    )
    return web.json_response({"items": items})


async def download(request: web.Request) -> web.StreamResponse:
    """Shared by the page and the API: streams the document."""
    doc = await envelopes.document(
        ctx_of(request), caller(request), kenmerk_param(request), seq_param(request)
    )
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in doc.bestandsnaam)[:100]
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Length": str(doc.size),
            "Content-Disposition": f'attachment; filename="{safe or "document"}"',
            "ETag": f'"{doc.sha256}"',
            "X-Content-SHA256": doc.sha256,
        }
    )
    await response.prepare(request)
    sent = 0
    try:
        async for chunk in doc.chunks:
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    finally:
        if doc.done is not None:  # a broken download is recorded as the part it was
            await doc.done(sent)
    return response


async def submit(request: web.Request) -> web.Response:
    upload = await upload_from(request, in_memory=False)
    result = await submission.submit(ctx_of(request), caller(request), upload)
    return web.json_response(result, status=201)


async def validate(request: web.Request) -> web.Response:
    upload = await upload_from(request, in_memory=True)
    findings = await submission.validate_only(ctx_of(request), caller(request), upload)
    return web.json_response({"valid": submission.is_valid(findings), "findings": findings})


async def catalogue(request: web.Request) -> web.Response:
    items = submission.catalogue(ctx_of(request), caller(request))
    return web.json_response({"items": items, "next_cursor": None})


async def _paged(request: web.Request, list_page: Any) -> web.Response:
    """One cursor page of ``list_page(ctx, caller, after=, limit=)`` as JSON."""
    q = query(request)
    ctx = ctx_of(request)
    page = await list_page(
        ctx,
        caller(request),
        after=q.get("cursor") or None,
        limit=envelopes.page_limit(q, ctx.settings.portal.page_size),
    )
    return _page(page)


async def inbox(request: web.Request) -> web.Response:
    return await _paged(request, recipients.inbox)


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem(400, "bad-field", f"{name}: tekst verwacht")
    return clean_text(name, value)


async def report_status(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await recipients.report_status(
        ctx_of(request),
        caller(request),
        kenmerk_param(request),
        _text(body, "code") or "",
        _text(body, "details"),
    )
    return web.json_response(result, status=201)


async def action(request: web.Request) -> web.Response:
    body = await json_body(request)
    result = await operator.act(
        ctx_of(request),
        caller(request),
        request.match_info["action"],
        kenmerk_param(request),
        reason=_text(body, "reason"),
        recipient=_text(body, "recipient"),
        confirmed=body.get("confirm") is True,
    )
    return web.json_response(result)


async def dead_letters(request: web.Request) -> web.Response:
    items = await operator.dead_letters(ctx_of(request), caller(request))
    return web.json_response({"items": items, "next_cursor": None})


async def audit(request: web.Request) -> web.Response:
    return await _paged(request, operator.audit_log)


async def live(request: web.Request) -> web.Response:
    return web.json_response(await live_state(ctx_of(request), caller(request)))


async def metering_report(request: web.Request) -> web.Response:
    month = metering.parse_month(request.query.get("month"))
    return web.json_response(await metering.ledger(ctx_of(request), caller(request), month))


async def metering_csv(request: web.Request) -> web.Response:
    month = metering.parse_month(request.query.get("month"))
    report = await metering.ledger(ctx_of(request), caller(request), month)
    return web.Response(
        text=metering.to_csv(report),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="metering-{report["month"]}.csv"'},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(ctx_of(request).settings.portal.public_url))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get(PREFIX + "/openapi.json", openapi)
    r.add_get(PREFIX + "/me", me)
    r.add_get(PREFIX + "/envelopes", list_envelopes)
    r.add_post(PREFIX + "/envelopes", submit)
    r.add_get(PREFIX + "/envelopes/{kenmerk}", envelope)
    r.add_get(PREFIX + "/envelopes/{kenmerk}/statuses", envelope_statuses)
    r.add_get(PREFIX + "/envelopes/{kenmerk}/documents/{seq}", download)
    r.add_post(PREFIX + "/envelopes/{kenmerk}/actions/{action}", action)
    r.add_post(PREFIX + "/validate", validate)
    r.add_get(PREFIX + "/catalogue", catalogue)
    r.add_get(PREFIX + "/inbox", inbox)
    r.add_post(PREFIX + "/inbox/{kenmerk}/status", report_status)
    r.add_get(PREFIX + "/search", search)
    r.add_get(PREFIX + "/dead-letters", dead_letters)
    r.add_get(PREFIX + "/audit", audit)
    r.add_get(PREFIX + "/live", live)
    r.add_get(PREFIX + "/metering", metering_report)
    r.add_get(PREFIX + "/metering.csv", metering_csv)
