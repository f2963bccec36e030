"""The portal's request pipeline: errors, secure headers, identity, rate limit, CSRF.

* every response carries a strict Content-Security-Policy (no inline script or style),
  ``nosniff``, ``no-referrer``, frame denial, HSTS and ``no-store``;
* the caller is the verified client certificate (:mod:`portal.identity`); a certificate
  of neither a participant nor an operator gets 403;
* a token bucket per caller (``portal.rate_limit_per_minute``) answers 429;
* unsafe methods need the caller's CSRF token: form field ``csrf_token`` or header
  ``X-CSRF-Token`` (multipart forms are checked by the handler, field first);
* errors are ``application/problem+json`` under ``/api/`` and an error page elsewhere.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_jinja2
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from portal.identity import Caller
from portal.problems import Problem

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUESTS = Counter(
    "digipoort_portal_requests_total",
    "Portal and API requests, by kind and outcome.",
    ["kind", "outcome"],
)

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Strict-Transport-Security": "max-age=31536000",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"


def is_api(request: web.Request) -> bool:
    return request.path.startswith("/api/")


def caller(request: web.Request) -> Caller:
    found = request.get("caller")
    assert isinstance(found, Caller)
    return found


class Csrf:
    """Tokens bound to the caller's certificate: HMAC(secret, fingerprint)."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def token(self, c: Caller) -> str:
        return hmac.new(self._key, c.fingerprint.encode(), hashlib.sha256).hexdigest()[:40]

    def check(self, c: Caller, presented: str | None) -> None:
        if not presented or not hmac.compare_digest(self.token(c), presented):
            REQUESTS.labels("csrf", "refused").inc()
            log.warning("portal.csrf_refused", oin=c.oin)
            raise Problem(403, "csrf", "ontbrekend of ongeldig CSRF-token")


class RateLimiter:
    """A token bucket per caller; the oldest buckets are forgotten beyond ``max_callers``."""

    def __init__(self, per_minute: int, *, max_callers: int = 10_000) -> None:
        self._capacity = float(max(per_minute, 1))
        self._rate = self._capacity / 60.0
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max = max_callers

    def allow(self, key: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until the next request would be."""
        t = time.monotonic() if now is None else now
        tokens, last = self._buckets.pop(key, (self._capacity, t))
        tokens = min(self._capacity, tokens + (t - last) * self._rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self._rate
        self._buckets[key] = (tokens, t)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


CSRF_KEY = web.AppKey("portal_csrf", Csrf)


def render(
    request: web.Request, template: str, data: dict[str, Any], status: int = 200
) -> web.Response:
    """A page: the template with the caller, its CSRF token and the path."""
    who = request.get("caller")
    base = {
        "caller": who if isinstance(who, Caller) else None,
        "csrf_token": request.app[CSRF_KEY].token(who) if isinstance(who, Caller) else "",
        "path": request.path,
    }
    return aiohttp_jinja2.render_template(template, request, {**base, **data}, status=status)


def error_response(request: web.Request, problem: Problem) -> web.StreamResponse:
    headers = {}
    if "retry_after" in problem.extra:
        headers["Retry-After"] = str(problem.extra["retry_after"])
    if is_api(request) or request.headers.get("Accept", "").startswith("application/json"):
        return problem.response(request.path, headers)
    response = render(request, "error.html", {"problem": problem}, status=problem.status)
    response.headers.update(headers)
    return response


def build_middlewares(
    identify: Callable[[web.Request], Caller | None],
    limiter: RateLimiter,
    csrf: Csrf,
) -> list[Middleware]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        kind = "api" if is_api(request) else "page"
        try:
            response = await handler(request)
        except Problem as exc:
            REQUESTS.labels(kind, str(exc.status)).inc()
            response = error_response(request, exc)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            REQUESTS.labels(kind, str(exc.status)).inc()
            problem = Problem(exc.status, "http-" + str(exc.status), exc.reason)
            response = error_response(request, problem)
        except Exception as exc:
            REQUESTS.labels(kind, "500").inc()
            log.error("portal.error", path=request.path, error=repr(exc))
            response = error_response(request, Problem(500, "internal", "interne fout"))
        else:
            REQUESTS.labels(kind, str(response.status)).inc()
        response.headers.update(SECURE_HEADERS)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @web.middleware
    async def identity(request: web.Request, handler: Handler) -> web.StreamResponse:
        who = identify(request)
        if who is None:
            raise Problem(401, "no-certificate", "een geldig clientcertificaat is vereist")
        if not (who.participant or who.operator):
            log.info("portal.unknown_caller", oin=who.oin)
            raise Problem(403, "unknown-participant", "dit certificaat hoort bij geen deelnemer")
        request["caller"] = who
        wait = limiter.allow(who.fingerprint)
        if wait > 0:
            REQUESTS.labels("ratelimit", "429").inc()
            raise Problem(
                429,
                "rate-limited",
                "te veel verzoeken; probeer het later opnieuw",
                extra={"retry_after": max(1, round(wait))},
            )
        if request.method in UNSAFE and request.content_type != "multipart/form-data":
            presented = request.headers.get(CSRF_HEADER)
            if presented is None and request.content_type == "application/x-www-form-urlencoded":
                form = await request.post()
                value = form.get(CSRF_FIELD)
                presented = value if isinstance(value, str) else None
            csrf.check(who, presented)
        return await handler(request)

    return [errors, identity]
