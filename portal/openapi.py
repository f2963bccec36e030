"""The OpenAPI 3.1 document of ``/api/v1`` (served at ``/api/v1/openapi.json``)."""

from __future__ import annotations

from typing import Any

_STR = {"type": "string"}
_NSTR = {"type": ["string", "null"]}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
_TIME = {"type": "string", "format": "date-time"}
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_OIN = {"type": "string", "pattern": "^[0-9]{20}$"}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    return _obj({"items": {"type": "array", "items": _ref(item)}, "next_cursor": _NSTR})


SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": _STR,
            "title": _STR,
            "status": _INT,
            "detail": _STR,
            "instance": _STR,
        },
        "required": ["type", "title", "status"],
    },
    "Me": _obj(
        {"oin": _OIN, "name": _STR, "operator": _BOOL, "participant": _BOOL, "csrf_token": _STR}
    ),
    "EnvelopeSummary": _obj(
        {
            "kenmerk": {"type": "string", "format": "uuid"},
            "berichtsoort": _STR,
            "koppelvlak": _STR,
            "sender": _STR,
            "aanleverkenmerk": _NSTR,
            "tijdstempel": _TIME,
            "recipients": {"type": "array", "items": _STR},
            "status": _NSTR,
            "status_tijdstempel": _NTIME,
        }
    ),
    "Status": _obj(
        {
            "id": _INT,
            "code": _STR,
            "omschrijving": _STR,
            "tijdstempel": _TIME,
            "recipient": _NSTR,
            "foutcode": _NSTR,
            "foutbeschrijving": _NSTR,
            "details": _NSTR,
        }
    ),
    "Finding": _obj(
        {"rule": _STR, "severity": _STR, "text": _STR, "location": _NSTR},
    ),
    "Document": _obj(
        {"seq": _INT, "bestandsnaam": _STR, "mime_type": _STR, "size": _INT, "sha256": _STR}
    ),
    "Delivery": _obj(
        {
            "recipient": _STR,
            "channel": _STR,
            "state": _STR,
            "attempts": _INT,
            "next_attempt": _NTIME,
            "last_error": _NSTR,
            "created": _NTIME,
            "delivered": _NTIME,
            "breaker": _STR,
            "repushable": _BOOL,
        }
    ),
    "Fetch": _obj(
        {
            "seq": _INT,
            "recipient": _STR,
            "requests": _INT,
            "bytes_sent": _INT,
            "first_complete": _NTIME,
            "last_fetch": _NTIME,
        }
    ),
    "EnvelopeAudit": _obj(
        {
            "at": _TIME,
            "operator": _STR,
            "action": _STR,
            "recipient": _NSTR,
            "reason": _STR,
            "outcome": _STR,
        }
    ),
    "Envelope": {
        "type": "object",
        "properties": {
            "kenmerk": {"type": "string", "format": "uuid"},
            "berichtsoort": _STR,
            "koppelvlak": _STR,
            "sender": _STR,
            "aanleverkenmerk": _NSTR,
            "tijdstempel": _TIME,
            "stage": _STR,
            "documents": {"type": "array", "items": _ref("Document")},
            "statuses": {"type": "array", "items": _ref("Status")},
            "findings": {"type": "array", "items": _ref("Finding")},
            "may_download": _BOOL,
            "is_recipient": _BOOL,
            "deliveries": {"type": "array", "items": _ref("Delivery")},
            "fetches": {"type": "array", "items": _ref("Fetch")},
            "audit": {"type": "array", "items": _ref("EnvelopeAudit")},
        },
        "required": [
            "kenmerk",
            "berichtsoort",
            "koppelvlak",
            "sender",
            "tijdstempel",
            "stage",
            "documents",
            "statuses",
            "findings",
            "may_download",
            "is_recipient",
        ],
    },
    "Accepted": _obj({"kenmerk": {"type": "string", "format": "uuid"}, "tijdstempel": _TIME}),
    "Validation": _obj({"valid": _BOOL, "findings": {"type": "array", "items": _ref("Finding")}}),
    "CatalogueItem": _obj(
        {
            "berichtsoort": _STR,
            "koppelvlakken": {"type": "array", "items": _STR},
            "via_portal": _BOOL,
            "recipients": {"type": "array", "items": _obj({"oin": _STR, "name": _STR})},
            "max_size": _INT,
            "mime_types": {"type": "array", "items": _STR},
            "xml": _BOOL,
            "schema": _NSTR,
        }
    ),
    "InboxItem": _obj(
        {
            "kenmerk": {"type": "string", "format": "uuid"},
            "berichtsoort": _STR,
            "sender": _STR,
            "aanleverkenmerk": _NSTR,
            "channel": _STR,
            "state": _STR,
            "created": _TIME,
            "delivered": _NTIME,
            "reported": _NSTR,
        }
    ),
    "Reported": _obj(
        {"kenmerk": {"type": "string", "format": "uuid"}, "code": _STR, "tijdstempel": _TIME}
    ),
    "ActionResult": _obj({"action": _STR, "kenmerk": _STR, "recipient": _NSTR, "outcome": _STR}),
    "DeadLetter": _obj(
        {"kenmerk": _NSTR, "stage": _STR, "queue": _STR, "reason": _STR, "count": _INT}
    ),
    "AuditItem": _obj(
        {
            "id": _INT,
            "at": _TIME,
            "operator": _STR,
            "fingerprint": _STR,
            "action": _STR,
            "kenmerk": _NSTR,
            "recipient": _NSTR,
            "reason": _STR,
            "outcome": _STR,
        }
    ),
    "LiveState": _obj(
        {
            "queues": {
                "type": "array",
                "items": _obj(
                    {
                        "name": _STR,
                        "messages": _INT,
                        "consumers": _INT,
                        "publish_rate": {"type": "number"},
                        "deliver_rate": {"type": "number"},
                    }
                ),
            },
            "queues_problem": _NSTR,
            "breakers": {"type": "array", "items": _obj({"recipient": _STR, "state": _STR})},
            "retrying": {
                "type": "array",
                "items": _obj(
                    {
                        "recipient": _STR,
                        "pending": _INT,
                        "max_attempts": _INT,
                        "next_attempt": _NTIME,
                    }
                ),
            },
            "expiry": {
                "type": "array",
                "items": _obj(
                    {
                        "kind": _STR,
                        "subject": _STR,
                        "not_after": _TIME,
                        "days_left": {"type": "number"},
                    }
                ),
            },
        }
    ),
    "Metering": _obj(
        {
            "month": _STR,
            "closed": _BOOL,
            "total_eur": _STR,
            "lines": {
                "type": "array",
                "items": _obj(
                    {
                        "organisation": _STR,
                        "name": _STR,
                        "aangeleverd": _INT,
                        "afgeleverd": _INT,
                        "rijksoverheid": _BOOL,
                        "tariff_eur": _STR,
                        "amount_eur": _STR,
                    }
                ),
            },
        }
    ),
    "Upload": {
        "type": "object",
        "properties": {
            "csrf_token": _STR,
            "berichtsoort": _STR,
            "aanleverkenmerk": _STR,
            "document": {"type": "string", "contentMediaType": "application/octet-stream"},
            "bijlage": {
                "type": "array",
                "items": {"type": "string", "contentMediaType": "application/octet-stream"},
            },
        },
        "required": ["berichtsoort", "document"],
    },
}

_PROBLEM = {
    "description": "Problem details (RFC 9457)",
    "content": {"application/problem+json": {"schema": _ref("Problem")}},
}


def _json(schema: str, description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _q(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


_KENMERK = {
    "name": "kenmerk",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_CURSOR = _q("cursor", {"type": "string", "maxLength": 200}, "next_cursor of the previous page")
_LIMIT = _q("limit", {"type": "integer", "minimum": 1, "maximum": 200})
_FILTERS = [
    _q("kenmerk", {"type": "string", "format": "uuid"}),
    _q("berichtsoort", {"type": "string", "maxLength": 80}),
    _q("status", {"type": "string", "pattern": "^[0-9]{3}$"}, "has a status with this code"),
    _q("since", {"type": "string", "format": "date-time"}, "aangeleverd at or after"),
    _q("until", {"type": "string", "format": "date-time"}, "aangeleverd before"),
    _q("aanleverkenmerk", {"type": "string", "maxLength": 200}),
]
_OPERATOR_FILTERS = [
    _q("sender", _OIN),
    _q("recipient", _OIN),
    _q("koppelvlak", {"type": "string", "enum": ["wus", "smtp", "ftp", "portal"]}),
]
_CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "schema": _STR,
    "description": "csrf_token from GET /api/v1/me",
}


def _op(
    summary: str,
    ok: dict[str, Any],
    *,
    code: str = "200",
    params: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": params or [],
        "responses": {code: ok, "default": _PROBLEM},
    }
    if body is not None:
        op["requestBody"] = body
    return op


def _multipart() -> dict[str, Any]:
    return {"required": True, "content": {"multipart/form-data": {"schema": _ref("Upload")}}}


def _json_body(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _obj(props, required)}}}


def document(server_url: str) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Digipoort portal API",
            "version": "1.0.0",
            "description": "Senders, recipients and operators of the Digipoort gateway. "
            "Mutual TLS: the client certificate's OIN is the caller. Unsafe methods need "
            "the X-CSRF-Token header (from GET /me). Errors: application/problem+json.",
        },
        "servers": [{"url": server_url.rstrip("/") + "/api/v1"}],
        "security": [{"mtls": []}],
        "paths": {
            "/me": {"get": _op("Who am I", _json("Me"))},
            "/envelopes": {
                "get": _op(
                    "My envelopes",
                    _json("Page_EnvelopeSummary"),
                    params=[*_FILTERS, _CURSOR, _LIMIT],
                ),
                "post": _op(
                    "Submit (koppelvlak portal)",
                    _json("Accepted", "Accepted"),
                    code="201",
                    params=[_CSRF],
                    body=_multipart(),
                ),
            },
            "/envelopes/{kenmerk}": {
                "get": _op("One envelope", _json("Envelope"), params=[_KENMERK])
            },
            "/envelopes/{kenmerk}/statuses": {
                "get": _op(
                    "Status history (after: only newer ids)",
                    {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": _obj(
                                    {"items": {"type": "array", "items": _ref("Status")}}
                                )
                            }
                        },
                    },
                    params=[_KENMERK, _q("after", {"type": "integer", "minimum": 0})],
                )
            },
            "/envelopes/{kenmerk}/documents/{seq}": {
                "get": _op(
                    "Download a document",
                    {
                        "description": "The document",
                        "content": {
                            "application/octet-stream": {
                                "schema": {
                                    "type": "string",
                                    "contentMediaType": "application/octet-stream",
                                }
                            }
                        },
                    },
                    params=[
                        _KENMERK,
                        {
                            "name": "seq",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "integer", "minimum": 0},
                        },
                    ],
                )
            },
            "/envelopes/{kenmerk}/actions/{action}": {
                "post": _op(
                    "Operator action (audited)",
                    _json("ActionResult"),
                    params=[
                        _KENMERK,
                        _CSRF,
                        {
                            "name": "action",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "enum": ["retry", "discard", "repush"]},
                        },
                    ],
                    body=_json_body(
                        {"reason": _STR, "recipient": _OIN, "confirm": {"const": True}},
                        ["reason", "confirm"],
                    ),
                )
            },
            "/validate": {
                "post": _op(
                    "Validate without submitting",
                    _json("Validation"),
                    params=[_CSRF],
                    body=_multipart(),
                )
            },
            "/catalogue": {"get": _op("What I may send", _json("Page_CatalogueItem"))},
            "/inbox": {
                "get": _op("Delivered to me", _json("Page_InboxItem"), params=[_CURSOR, _LIMIT])
            },
            "/inbox/{kenmerk}/status": {
                "post": _op(
                    "Report my processing status (zetStatus)",
                    _json("Reported", "Recorded"),
                    code="201",
                    params=[_KENMERK, _CSRF],
                    body=_json_body(
                        {
                            "code": {"type": "string", "enum": ["500", "510"]},
                            "details": {"type": "string", "maxLength": 2000},
                        },
                        ["code"],
                    ),
                )
            },
            "/search": {
                "get": _op(
                    "Message log (operators)",
                    _json("Page_EnvelopeSummary"),
                    params=[*_FILTERS, *_OPERATOR_FILTERS, _CURSOR, _LIMIT],
                )
            },
            "/dead-letters": {"get": _op("Dead letters (operators)", _json("Page_DeadLetter"))},
            "/audit": {
                "get": _op(
                    "Audit log (operators)", _json("Page_AuditItem"), params=[_CURSOR, _LIMIT]
                )
            },
            "/live": {"get": _op("Live state (operators)", _json("LiveState"))},
            "/metering": {
                "get": _op(
                    "Metering ledger (operators)",
                    _json("Metering"),
                    params=[_q("month", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"})],
                )
            },
            "/metering.csv": {
                "get": _op(
                    "Metering ledger as CSV (operators)",
                    {"description": "CSV", "content": {"text/csv": {"schema": _STR}}},
                    params=[_q("month", {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"})],
                )
            },
            "/openapi.json": {
                "get": _op(
                    "This document",
                    {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                )
            },
        },
        "components": {
            "schemas": {
                **SCHEMAS,
                **{
                    f"Page_{n}": _page(n)
                    for n in (
                        "EnvelopeSummary",
                        "CatalogueItem",
                        "InboxItem",
                        "DeadLetter",
                        "AuditItem",
                    )
                },
            },
            "securitySchemes": {"mtls": {"type": "mutualTLS"}},
        },
    }
