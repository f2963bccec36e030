"""Pure parts of afleveren: the subscriber's trust boundary, zetStatus parsing, the
recipients' permissions."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from digipoort.broker import STATUS_EXCHANGE, aflever_queue
from routing import subscriber
from routing.provision import oin_of_user, permissions, recipient_url, recipient_user
from routing.statusreports import Refused, build_zet_status, parse_zet_status
from tests.test_afleveren_queue import _aflever_xml

OIN = "00000099200000010000"


@pytest.mark.parametrize(
    "kenmerk", ["../../etc", "", "a" * 40, "00000000-0000-0000-0000-00000000000/"]
)
def test_subscriber_never_uses_an_untrusted_kenmerk_as_a_path(tmp_path: Path, kenmerk: str) -> None:
    with pytest.raises(subscriber.NotAnAfleverRequest):
        subscriber.store(tmp_path, _aflever_xml(kenmerk, b"<a/>"), None)
    assert list(tmp_path.iterdir()) == []


def test_subscriber_refuses_mismatched_message_id_and_garbage(tmp_path: Path) -> None:
    k = str(uuid.uuid4())
    with pytest.raises(subscriber.NotAnAfleverRequest, match="message_id"):
        subscriber.store(tmp_path, _aflever_xml(k, b"<a/>"), str(uuid.uuid4()))
    with pytest.raises(subscriber.NotAnAfleverRequest):
        subscriber.store(
            tmp_path, b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><x>&e;</x>", None
        )
    with pytest.raises(subscriber.NotAnAfleverRequest):
        subscriber.store(tmp_path, b"not xml", None)
    path = subscriber.quarantine(tmp_path, b"not xml", "../../x")
    assert path.parent == tmp_path / ".quarantine" and path.read_bytes() == b"not xml"
    stored = subscriber.store(tmp_path, _aflever_xml(k, b"<a/>"), k)
    assert stored.files == ["x.xml"] and (tmp_path / k / "x.xml").read_bytes() == b"<a/>"
    assert subscriber.store(tmp_path, _aflever_xml(k, b"<b/>"), k).duplicate
    assert (tmp_path / k / "x.xml").read_bytes() == b"<a/>"


def test_zet_status_round_trip_and_refusals() -> None:
    k = uuid.uuid4()
    ts = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    doc = build_zet_status(
        k,
        "510",
        tijdstempel=ts,
        foutcode="F1",
        foutbeschrijving="fout",
        details="regel 1",
        berichtkenmerk="b",
    )
    parsed = parse_zet_status(doc)
    assert (parsed.kenmerk, parsed.statuscode, parsed.tijdstempel) == (k, "510", ts)
    assert (parsed.foutcode, parsed.foutbeschrijving, parsed.details) == ("F1", "fout", "regel 1")
    for body, reason in (
        (build_zet_status(k, "400"), "code_not_allowed"),
        (build_zet_status(k, "5000"), "code_not_allowed"),
        (build_zet_status("not-a-uuid", "500"), "unknown_kenmerk"),
        (b"<x/>", "not_zetstatus"),
        (b"<!DOCTYPE x []><x/>", "malformed"),
        (build_zet_status(k, "500").replace(b"Z</", b"nonsense</"), "malformed"),
    ):
        with pytest.raises(Refused) as info:
            parse_zet_status(body)
        assert info.value.reason == reason


def test_recipient_permissions_and_names() -> None:
    p = permissions(OIN)
    assert p["configure"] == "^$"
    assert re.fullmatch(p["read"], aflever_queue(OIN))
    assert not re.fullmatch(p["read"], aflever_queue("00000099200000020000"))
    assert not re.fullmatch(p["read"], aflever_queue(OIN) + "x")
    assert re.fullmatch(p["write"], STATUS_EXCHANGE) and not re.fullmatch(
        p["write"], "digipoort.aflever"
    )
    user = recipient_user(OIN, "digipoort")
    assert oin_of_user(user, "digipoort") == OIN
    assert oin_of_user(user, "other") is None and oin_of_user("guest", "digipoort") is None
    url = recipient_url("amqps://gw:secret@mq.example:5671/digipoort", user, "p@ss/word")
    assert url == f"amqps://{OIN}%40digipoort:p%40ss%2Fword@mq.example:5671/digipoort"
