"""Small helpers shared by the page and API handlers."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from portal import envelopes
from portal.context import Context
from portal.envelopes import Page, parse_kenmerk
from portal.identity import Caller
from portal.middleware import CSRF_HEADER, CSRF_KEY, Csrf
from portal.problems import Problem
from portal.submission import Upload, read_upload

CTX_KEY = web.AppKey("portal_ctx", Context)
MAX_JSON = 64 * 1024


async def search_request(request: web.Request, scope: str) -> Page:
    """The envelope list or message-log search of a request (pages and API share it)."""
    q = query(request)
    ctx = ctx_of(request)
    c = request.get("caller")
    assert isinstance(c, Caller)
    return await envelopes.search(
        ctx,
        c,
        envelopes.parse_filters(q),
        after=q.get("cursor") or None,
        limit=envelopes.page_limit(q, ctx.settings.portal.page_size),
        scope=scope,
    )


def ctx_of(request: web.Request) -> Context:
    return request.app[CTX_KEY]


def csrf_of(request: web.Request) -> Csrf:
    return request.app[CSRF_KEY]


def query(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.query.items()}


def kenmerk_param(request: web.Request) -> UUID:
    return parse_kenmerk(request.match_info["kenmerk"])


def seq_param(request: web.Request) -> int:
    raw = request.match_info["seq"]
    if not raw.isdigit() or int(raw) > 1000:
        raise Problem(404, "not-found", "document niet gevonden")
    return int(raw)


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise Problem(415, "json-expected", "verwacht application/json")
    if request.content_length is not None and request.content_length > MAX_JSON:
        raise Problem(413, "too-large", "verzoek te groot")
    raw = await request.content.read(MAX_JSON + 1)
    if len(raw) > MAX_JSON:
        raise Problem(413, "too-large", "verzoek te groot")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "bad-json", "ongeldige JSON") from None
    if not isinstance(data, dict):
        raise Problem(400, "bad-json", "verwacht een JSON-object")
    return data


async def upload_from(request: web.Request, *, in_memory: bool) -> Upload:
    """The multipart upload form of a submit or validate request (pages and API)."""
    if request.content_type != "multipart/form-data":
        raise Problem(415, "multipart-expected", "verwacht multipart/form-data")
    c = request.get("caller")
    assert isinstance(c, Caller)
    try:
        return await read_upload(
            await request.multipart(),
            ctx_of(request),
            c,
            csrf_of(request),
            request.headers.get(CSRF_HEADER),
            in_memory=in_memory,
        )
    except (HttpProcessingError, ValueError, UnicodeDecodeError) as exc:
        raise Problem(400, "bad-form", "ongeldig multipart-formulier") from exc
