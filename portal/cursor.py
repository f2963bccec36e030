"""Opaque keyset cursors: the sort key of the last row of a page, base64url JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from uuid import UUID

from portal.problems import Problem

MAX_CURSOR = 200


def encode(at: datetime, key: UUID | int) -> str:
    raw = json.dumps([at.isoformat(), str(key)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[datetime, str]:
    """``(timestamp, key)`` or a 400 problem for anything that is not our cursor."""
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, key = json.loads(raw)
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None or not isinstance(key, str):
            raise ValueError("bad cursor")
        return parsed, key
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise Problem(400, "bad-cursor", "ongeldige cursor") from None


def decode_uuid(cursor: str) -> tuple[datetime, UUID]:
    at, key = decode(cursor)
    try:
        return at, UUID(key)
    except ValueError:
        raise Problem(400, "bad-cursor", "ongeldige cursor") from None


def decode_int(cursor: str) -> tuple[datetime, int]:
    at, key = decode(cursor)
    if not key.isdigit() or len(key) > 18:
        raise Problem(400, "bad-cursor", "ongeldige cursor")
    return at, int(key)
