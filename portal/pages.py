"""Server-rendered pages (Jinja2, autoescaped). Each handler calls the same service
function as its API twin in :mod:`portal.api`; forms carry the CSRF token."""

from __future__ import annotations

from aiohttp import web

from portal import envelopes, metering, operator, recipients, submission
from portal.api import download
from portal.livestate import live_state
from portal.middleware import caller, render
from portal.problems import Problem, clean_text
from portal.web import ctx_of, kenmerk_param, query, search_request, upload_from


async def home(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/console" if caller(request).operator else "/envelopes")


async def my_envelopes(request: web.Request) -> web.Response:
    page = await search_request(request, "sent")
    soorten = ctx_of(request).registry.berichtsoorten_for_sender(caller(request).oin)
    return render(
        request, "envelopes.html", {"page": page, "q": query(request), "soorten": soorten}
    )


async def envelope(request: web.Request) -> web.Response:
    data = await envelopes.detail(ctx_of(request), caller(request), kenmerk_param(request))
    return render(request, "envelope.html", {"e": data, "done": request.query.get("done")})


def _portal_soorten(request: web.Request) -> list[str]:
    return ctx_of(request).registry.berichtsoorten_for_sender(
        caller(request).oin, submission.KOPPELVLAK
    )


def _submit_page(request: web.Request, error: str | None, status: int = 200) -> web.Response:
    cfg = ctx_of(request).settings.portal
    data = {
        "soorten": _portal_soorten(request),
        "error": error,
        "max_upload_bytes": cfg.max_upload_bytes,
        "max_bijlagen": cfg.max_bijlagen,
    }
    return render(request, "submit.html", data, status=status)


async def submit_form(request: web.Request) -> web.Response:
    return _submit_page(request, None)


#: refusals shown on the form itself (too large, too many bijlagen, refused, …), so the
#: user sees what to change; anything else gets the error page
FORM_ERRORS = (400, 413, 422)


async def submit(request: web.Request) -> web.StreamResponse:
    try:
        upload = await upload_from(request, in_memory=False)
        result = await submission.submit(ctx_of(request), caller(request), upload)
    except Problem as exc:
        if exc.status not in FORM_ERRORS or exc.kind == "csrf":
            raise
        return _submit_page(request, exc.detail, exc.status)
    raise web.HTTPSeeOther(f"/envelopes/{result['kenmerk']}")


def _sendable(request: web.Request) -> list[str]:
    return ctx_of(request).registry.berichtsoorten_for_sender(caller(request).oin)


async def validate_form(request: web.Request) -> web.Response:
    return render(
        request, "validate.html", {"soorten": _sendable(request), "result": None, "error": None}
    )


async def validate(request: web.Request) -> web.Response:
    try:
        upload = await upload_from(request, in_memory=True)
    except Problem as exc:
        if exc.status not in FORM_ERRORS or exc.kind == "csrf":
            raise
        return render(
            request,
            "validate.html",
            {"soorten": _sendable(request), "result": None, "error": exc.detail},
            status=exc.status,
        )
    findings = await submission.validate_only(ctx_of(request), caller(request), upload)
    soorten = _sendable(request)
    result = {
        "berichtsoort": upload.fields.get("berichtsoort"),
        "bestandsnaam": upload.document.bestandsnaam if upload.document else "",
        "findings": findings,
        "valid": submission.is_valid(findings),
    }
    return render(request, "validate.html", {"soorten": soorten, "result": result, "error": None})


async def catalogue(request: web.Request) -> web.Response:
    items = submission.catalogue(ctx_of(request), caller(request))
    return render(request, "catalogue.html", {"items": items})


async def inbox(request: web.Request) -> web.Response:
    q = query(request)
    ctx = ctx_of(request)
    page = await recipients.inbox(
        ctx, caller(request), after=q.get("cursor") or None, limit=ctx.settings.portal.page_size
    )
    return render(request, "inbox.html", {"page": page})


async def _form(request: web.Request) -> dict[str, str]:
    form = await request.post()
    return {k: clean_text(k, v) for k, v in form.items() if isinstance(v, str)}


async def report_status(request: web.Request) -> web.StreamResponse:
    kenmerk = kenmerk_param(request)
    form = await _form(request)
    await recipients.report_status(
        ctx_of(request), caller(request), kenmerk, form.get("code", ""), form.get("details")
    )
    raise web.HTTPSeeOther(f"/envelopes/{kenmerk}?done=status")


async def console(request: web.Request) -> web.Response:
    q = query(request)
    ctx = ctx_of(request)
    c = caller(request)
    operator.require_operator(c)
    searched = any(
        q.get(k)
        for k in (
            "kenmerk",
            "sender",
            "recipient",
            "berichtsoort",
            "koppelvlak",
            "status",
            "since",
            "until",
            "cursor",
            "go",
        )
    )
    page = await search_request(request, "all") if searched else None
    return render(
        request,
        "console.html",
        {"page": page, "q": q, "soorten": sorted(ctx.registry.berichtsoorten)},
    )


async def action(request: web.Request) -> web.StreamResponse:
    kenmerk = kenmerk_param(request)
    name = request.match_info["action"]
    form = await _form(request)
    await operator.act(
        ctx_of(request),
        caller(request),
        name,
        kenmerk,
        reason=form.get("reason"),
        recipient=form.get("recipient") or None,
        confirmed=form.get("confirm") == "yes",
    )
    raise web.HTTPSeeOther(f"/envelopes/{kenmerk}?done={name}")


async def dead(request: web.Request) -> web.Response:
    items = await operator.dead_letters(ctx_of(request), caller(request))
    return render(request, "dead.html", {"items": items})


async def live(request: web.Request) -> web.Response:
    return render(request, "live.html", {"s": await live_state(ctx_of(request), caller(request))})


async def audit(request: web.Request) -> web.Response:
    q = query(request)
    ctx = ctx_of(request)
    page = await operator.audit_log(
        ctx, caller(request), after=q.get("cursor") or None, limit=ctx.settings.portal.page_size
    )
    return render(request, "audit.html", {"page": page})


async def metering_page(request: web.Request) -> web.Response:
    month = metering.parse_month(request.query.get("month"))
    report = await metering.ledger(ctx_of(request), caller(request), month)
    return render(request, "metering.html", {"r": report})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/", home)
    r.add_get("/envelopes", my_envelopes)
    r.add_get("/envelopes/{kenmerk}", envelope)
    r.add_get("/envelopes/{kenmerk}/documents/{seq}", download)
    r.add_get("/submit", submit_form)
    r.add_post("/submit", submit)
    r.add_get("/validate", validate_form)
    r.add_post("/validate", validate)
    r.add_get("/catalogue", catalogue)
    r.add_get("/inbox", inbox)
    r.add_post("/inbox/{kenmerk}/status", report_status)
    r.add_get("/console", console)
    r.add_post("/console/envelopes/{kenmerk}/{action}", action)
    r.add_get("/console/dead", dead)
    r.add_get("/console/live", live)
    r.add_get("/console/audit", audit)
    r.add_get("/console/metering", metering_page)
