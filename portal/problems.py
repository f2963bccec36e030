"""RFC 9457 problem details: every API error is ``application/problem+json``."""

from __future__ import annotations

import json
from typing import Any, Final

from aiohttp import web

PROBLEM_TYPE: Final = "application/problem+json"
TYPE_BASE: Final = "https://digipoort.test/problems/"

TITLES: Final = {
    400: "Ongeldig verzoek",
    401: "Niet geauthenticeerd",
    403: "Geen toegang",
    404: "Niet gevonden",
    405: "Methode niet toegestaan",
    409: "Conflict",
    413: "Te groot",
    415: "Mediatype niet ondersteund",
    422: "Niet verwerkbaar",
    429: "Te veel verzoeken",
    500: "Interne fout",
    503: "Tijdelijk niet beschikbaar",
}


class Problem(Exception):
    """Raised by service functions and handlers; rendered as problem+json (API) or an
    error page (pages). ``kind`` is a stable machine word, part of the ``type`` URI."""

    def __init__(
        self, status: int, kind: str, detail: str = "", *, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail or kind)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.extra = extra or {}

    @property
    def title(self) -> str:
        return TITLES.get(self.status, "Fout")

    def body(self, instance: str) -> dict[str, Any]:
        return {
            "type": TYPE_BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
            "instance": instance,
            **self.extra,
        }

    def response(self, instance: str, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(
            status=self.status,
            body=json.dumps(self.body(instance)).encode(),
            content_type=PROBLEM_TYPE,
            headers=headers,
        )


def not_found(what: str = "envelop") -> Problem:
    """The one answer for "unknown" and "not yours": nothing leaks."""
    return Problem(404, "not-found", f"{what} niet gevonden")


def clean_text(name: str, value: str, *, multiline: bool = True) -> str:
    """User text for the database: control characters (NUL included) are refused."""
    allowed = "\n\r\t" if multiline else ""
    if any((ord(c) < 32 and c not in allowed) or c in "\x7f\ufffe\uffff" for c in value):
        raise Problem(400, "bad-text", f"{name}: ongeldige tekens")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Problem(400, "bad-text", f"{name}: ongeldige tekens")
    return value
