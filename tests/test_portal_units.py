"""Pure parts of the portal: cursors, filters, findings, metering arithmetic, text checks."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from portal import cursor
from portal.envelopes import parse_filters
from portal.metering import amount, parse_month, to_csv
from portal.problems import Problem, clean_text
from portal.validation import Finding, findings_from_details


def test_cursor_round_trip_and_garbage() -> None:
    at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    key = uuid.uuid4()
    assert cursor.decode_uuid(cursor.encode(at, key)) == (at, key)
    assert cursor.decode_int(cursor.encode(at, 42)) == (at, 42)
    for bad in ("", "zzz", "x" * 300, cursor.encode(at, 42)):
        with pytest.raises(Problem) as exc:
            cursor.decode_uuid(bad)
        assert exc.value.status == 400


def test_filters() -> None:
    f = parse_filters({"status": "400", "since": "2026-11-01", "sender": "0" * 20})
    assert f.status == "400" and f.since == datetime(2026, 11, 1, tzinfo=UTC)
    for bad in (
        {"status": "4000"},
        {"sender": "123"},
        {"kenmerk": "x"},
        {"koppelvlak": "fax"},
        {"berichtsoort": "a\x00b"},
        {"until": "morgen"},
    ):
        with pytest.raises(Problem):
            parse_filters(bad)


def test_findings_from_details_both_formats() -> None:
    details = (
        "regel 3: Element 'x': not expected.\nBR-01 [fatal] Een factuur (bij /Invoice[1])\nvrij"
    )
    assert findings_from_details(details) == [
        Finding("XSD", "error", "Element 'x': not expected.", "regel 3"),
        Finding("BR-01", "fatal", "Een factuur", "/Invoice[1]"),
        Finding("VAS500", "error", "vrij"),
    ]
    assert findings_from_details(None) == []


def test_metering_amount_and_months() -> None:
    tariff = Decimal("0.59")
    assert amount(3, 2, False, tariff) == Decimal("2.95")
    assert amount(3, 2, True, tariff) == Decimal("0.00")
    assert parse_month("2026-02") == date(2026, 2, 1)
    assert parse_month(None, date(2026, 11, 29)) == date(2026, 11, 1)
    for bad in ("2026-13", "26-01", "x"):
        with pytest.raises(Problem):
            parse_month(bad)
    csv = to_csv(
        {
            "month": "2026-11",
            "closed": True,
            "lines": [
                {
                    "organisation": "1" * 20,
                    "name": "=HYPERLINK()",
                    "aangeleverd": 1,
                    "afgeleverd": 0,
                    "rijksoverheid": False,
                    "tariff_eur": "0.59",
                    "amount_eur": "0.59",
                }
            ],
        }
    )
    assert "'=HYPERLINK()" in csv


def test_clean_text() -> None:
    assert clean_text("x", "regel\nnog een") == "regel\nnog een"
    for bad in ("a\x00", "a\x1b", "\ud800"):
        with pytest.raises(Problem):
            clean_text("x", bad)
    with pytest.raises(Problem):
        clean_text("x", "a\nb", multiline=False)
