"""The portal's aiohttp application: middlewares, templates, static files, routes."""

from __future__ import annotations

from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from digipoort.pki import CertificateVerifier
from portal import api, pages
from portal.context import Context
from portal.identity import Caller, caller_of
from portal.middleware import CSRF_KEY, Csrf, RateLimiter, build_middlewares
from portal.web import CTX_KEY

STATIC = Path(__file__).resolve().parent / "static"
#: the largest request body (uploads are limited per file by portal.max_upload_bytes)
BODY_SLACK = 1024 * 1024


def application(ctx: Context, verifier: CertificateVerifier) -> web.Application:
    cfg = ctx.settings.portal
    csrf = Csrf(cfg.csrf_secret)

    def identify(request: web.Request) -> Caller | None:
        return caller_of(request, verifier, cfg.operators, ctx.registry)

    app = web.Application(
        middlewares=build_middlewares(identify, RateLimiter(cfg.rate_limit_per_minute), csrf),
        client_max_size=cfg.max_upload_bytes * (cfg.max_bijlagen + 1) + BODY_SLACK,
    )
    app[CTX_KEY] = ctx
    app[CSRF_KEY] = csrf
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.PackageLoader("portal", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
    )
    app.router.add_static("/static/", STATIC, show_index=False, follow_symlinks=False)
    pages.add_routes(app)
    api.add_routes(app)
    return app
