"""SOAP 1.1 / WS-Addressing envelope handling (digipoort.wus.soap): parsing, hardening,
building requests and faults shaped like the observed Digipoort responses."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from lxml import etree

from adapters.wus.zetstatus import EXTRA_OPERATIONS
from digipoort.wus.soap import (
    AANLEVERSERVICE_NS,
    FAULT_DETAIL_ELEMENTS,
    KOPPELVLAK_NS,
    OPERATIONS,
    SOAP11_NS,
    SOAP12_NS,
    WSA_ANONYMOUS,
    WSA_FAULT_ACTION,
    WSA_NS,
    WSU_NS,
    SoapError,
    build_envelope,
    build_fault,
    operation_for_action,
    parse_envelope,
)

SPECS = Path("/work/shared/specs/wus")
OUR_WSDLS = Path(__file__).resolve().parents[1] / "adapters/wus/specs/wsdl"
OBSERVED = SPECS / "observed"
needs_specs = pytest.mark.skipif(not SPECS.is_dir(), reason="shared specs not available")

AANLEVER_ACTION = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"
TO = "https://dgp.procesinfrastructuur.nl/wus/2.0/aanleverservice/1.2"
WSU_ID = f"{{{WSU_NS}}}Id"


def _payload() -> etree._Element:
    root = etree.Element(f"{{{KOPPELVLAK_NS}}}aanleverRequest", nsmap={None: KOPPELVLAK_NS})
    etree.SubElement(root, f"{{{KOPPELVLAK_NS}}}berichtsoort").text = "Omzetbelasting"
    return root


def _envelope(
    headers: str = "", body: str = "<kv:x xmlns:kv='urn:kv'/>", *, wsa: str | None = None
) -> bytes:
    if wsa is None:
        wsa = (
            f"<wsa:To>{TO}</wsa:To><wsa:Action>{AANLEVER_ACTION}</wsa:Action>"
            "<wsa:MessageID>urn:uuid:1</wsa:MessageID>"
        )
    return (
        f'<s:Envelope xmlns:s="{SOAP11_NS}" xmlns:wsa="{WSA_NS}">'
        f"<s:Header>{wsa}{headers}</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def _code(data: bytes, **kwargs: object) -> str:
    with pytest.raises(SoapError) as info:
        parse_envelope(data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


# --------------------------------------------------------------------------- observed


@needs_specs
def test_parses_observed_deliver_response() -> None:
    parsed = parse_envelope((OBSERVED / "valid-deliver-response.xml").read_bytes())
    assert parsed.to == WSA_ANONYMOUS
    assert parsed.action == AANLEVERSERVICE_NS + "AanleverService/aanleverenResponse"
    assert parsed.message_id == "urn:uuid:de1dc4f7-98ab-4a03-90a5-e9efd20b1003"
    assert parsed.relates_to == "urn:uuid:de1dc4f7-98ab-4a03-90a5-e9efd20b1003"
    assert parsed.reply_to is None
    assert parsed.payload.tag == f"{{{KOPPELVLAK_NS}}}aanleverResponse"
    assert parsed.payload.getparent() is parsed.body
    assert set(parsed.wsa_headers) == {"To", "MessageID", "Action", "RelatesTo"}


@needs_specs
@pytest.mark.parametrize(
    "name",
    [
        "valid-newstatus-response.xml",
        "fault-deliver-response.xml",
        "fault-newstatus-response.xml",
        "tampered-deliver-response.xml",
    ],
)
def test_parses_all_observed_messages(name: str) -> None:
    parsed = parse_envelope((OBSERVED / name).read_bytes())
    assert parsed.to == WSA_ANONYMOUS
    assert parsed.relates_to


@needs_specs
def test_build_fault_reproduces_observed_deliver_fault_byte_for_byte() -> None:
    observed = (OBSERVED / "fault-deliver-response.xml").read_bytes()
    beschrijving = (
        "Het verzoek voldoet niet aan de koppelvlakspecificaties en kan hierdoor niet door "
        "Digipoort worden verwerkt.\n\nDe volgende fout is opgetreden: \n\n"
    )
    built = build_fault(
        "soapenv:Client",
        "Algemene fout",
        "aanleverFault",
        "ALS100",
        beschrijving,
        action=OPERATIONS[AANLEVER_ACTION].fault_action,
        relates_to="urn:uuid:fbb2d0e7-d861-408b-98b8-2708f8f3210f",
        message_id="urn:uuid:fbb2d0e7-d861-408b-98b8-2708f8f3210f",
    )
    assert built == observed.rstrip(b"\n")


def _shape(data: bytes) -> list[tuple[str, str]]:
    root = etree.fromstring(data)
    return [
        (str(el.tag), (el.text or "").strip() if len(el) == 0 else "")
        for el in root.iter()
        if isinstance(el.tag, str)
    ]


@needs_specs
def test_build_fault_matches_observed_status_fault_shape() -> None:
    observed = (OBSERVED / "fault-newstatus-response.xml").read_bytes()
    op = operation_for_action(
        "http://logius.nl/digipoort/wus/2.0/statusinformatieservice/1.2/"
        "StatusinformatieService/getNieuweStatussenProcesRequest"
    )
    assert op is not None
    built = build_fault(
        "soapenv:Client",
        "Algemene fout",
        op.fault_element,
        "STS100",
        "Het verzoek voldoet niet aan de koppelvlakspecificaties en kan hierdoor niet door "
        "Digipoort worden verwerkt.\n\nDe volgende fout is opgetreden:",
        action=op.fault_action,
        relates_to="urn:uuid:c92d0619-999e-4c3d-bc12-c9674a1aace0",
        message_id="uuid:46fa8636-25f1-464e-906a-d77633427aaa",
    )
    assert _shape(built) == _shape(observed)
    parsed = parse_envelope(built)
    assert parsed.payload.tag == f"{{{SOAP11_NS}}}Fault"
    assert parsed.action == op.fault_action


def test_build_fault_is_unsigned_well_formed_and_safe() -> None:
    built = build_fault(
        "soapenv:Server",
        "Technische fout <&>",
        "statusinformatieFault",
        "STS100",
        "bad \x00 char & <tag>",
    )
    assert built.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope')
    parsed = parse_envelope(built)
    assert parsed.action == WSA_FAULT_ACTION
    assert b"Security" not in built
    fault = parsed.payload
    assert fault.findtext("faultcode") == "soapenv:Server"
    detail = fault.find(f"detail/{{{KOPPELVLAK_NS}}}statusinformatieFault")
    assert detail is not None
    assert detail.findtext(f"{{{KOPPELVLAK_NS}}}foutbeschrijving") == "bad \ufffd char & <tag>"


def test_build_fault_without_action_uses_generic_wsa_fault_action() -> None:
    # No request to relate to (e.g. it was not even XML): still a valid WS-A message.
    parsed = parse_envelope(build_fault("soapenv:Client", "x", "aanleverFault", "ALS100", "y"))
    assert parsed.action == WSA_FAULT_ACTION
    assert parsed.relates_to is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("soapenv:Sender", "x", "aanleverFault", "ALS100", "y"), "faultcode"),
        (("soapenv:Client", "x", "bogusFault", "ALS100", "y"), "detail"),
        (("soapenv:Client", "x", "aanleverFault", "A" * 21, "y"), "foutcode"),
    ],
)
def test_build_fault_rejects_bad_arguments(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_fault(*args)  # type: ignore[arg-type]


def test_fault_detail_elements_are_in_the_xsd() -> None:
    assert {"aanleverFault", "statusinformatieFault", "afleverFault"} <= FAULT_DETAIL_ELEMENTS
    if SPECS.is_dir():
        xsd = (SPECS / "digipoort-koppelvlak-1.2.xsd").read_text()
        for name in FAULT_DETAIL_ELEMENTS:
            assert f'name="{name}"' in xsd


@needs_specs
@pytest.mark.parametrize("wsdl", ["aanleverservice-1.2.wsdl", "statusinformatieservice-1.2.wsdl"])
def test_operation_actions_match_the_wsdls(wsdl: str) -> None:
    tree = etree.parse(str(SPECS / "wsdl" / wsdl))
    ns = {
        "wsdl": "http://schemas.xmlsoap.org/wsdl/",
        "soap11": "http://schemas.xmlsoap.org/wsdl/soap/",
        "wsaw": "http://www.w3.org/2006/05/addressing/wsdl",
    }
    soap_actions = tree.xpath("//soap11:operation/@soapAction", namespaces=ns)
    assert soap_actions
    for action in soap_actions:
        op = OPERATIONS[str(action)]
        (port_op,) = tree.xpath(f"//wsdl:portType/wsdl:operation[@name='{op.name}']", namespaces=ns)
        output = port_op.find("wsdl:output", ns)
        fault = port_op.find("wsdl:fault", ns)
        assert output.get(f"{{{ns['wsaw']}}}Action") == op.response_action
        assert fault.get(f"{{{ns['wsaw']}}}Action") == op.fault_action


# --------------------------------------------------------------------------- building


def test_build_envelope_round_trip() -> None:
    payload = _payload()
    env = build_envelope(
        payload,
        action=AANLEVER_ACTION,
        to=TO,
        message_id="urn:uuid:abc",
        relates_to="urn:uuid:req",
        reply_to_anonymous=True,
    )
    assert payload.getparent() is None  # the caller's element is not moved
    parsed = parse_envelope(etree.tostring(env))
    assert (parsed.to, parsed.action, parsed.message_id) == (TO, AANLEVER_ACTION, "urn:uuid:abc")
    assert parsed.relates_to == "urn:uuid:req"
    assert parsed.reply_to == WSA_ANONYMOUS
    assert parsed.payload.findtext(f"{{{KOPPELVLAK_NS}}}berichtsoort") == "Omzetbelasting"
    ids = [el.get(WSU_ID) for el in (*parsed.wsa_headers.values(), parsed.body)]
    assert all(ids) and len(set(ids)) == len(ids) == 6


def test_build_envelope_generates_message_id() -> None:
    a = parse_envelope(etree.tostring(build_envelope(_payload(), action="a", to="b")))
    b = parse_envelope(etree.tostring(build_envelope(_payload(), action="a", to="b")))
    assert a.message_id.startswith("urn:uuid:") and a.message_id != b.message_id
    assert a.relates_to is None and a.reply_to is None


# --------------------------------------------------------------------------- hardening


BILLION_LAUGHS = (
    b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
        for i in range(1, 10)
    )
    + b"]><lolz>&lol9;</lolz>"
)


def test_billion_laughs_refused_fast() -> None:
    started = time.perf_counter()
    assert _code(BILLION_LAUGHS) == "dtd_forbidden"
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    "data",
    [
        b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        + _envelope(body="<x>&xxe;</x>"),
        b'<?xml version="1.0"?>\n<!-- c --><?pi x?>\n<!DOCTYPE s:Envelope SYSTEM "http://e/x.dtd">'
        + _envelope(),
        b"\xef\xbb\xbf<!DOCTYPE a>" + _envelope(),
        b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://evil/p.dtd"> %p;]>' + _envelope(),
    ],
    ids=["xxe", "after-prolog", "after-bom", "parameter-entity"],
)
def test_doctype_refused(data: bytes) -> None:
    assert _code(data) == "dtd_forbidden"


def test_depth_limit() -> None:
    def nested(depth: int) -> bytes:
        # Envelope(1) / Body(2) / payload(3) ... so depth-2 nested payload elements.
        inner = "<a>" * (depth - 2) + "</a>" * (depth - 2)
        return _envelope(body=inner)

    assert parse_envelope(nested(64)).payload.tag == "a"
    assert _code(nested(65)) == "too_deep"
    assert _code(nested(11), max_depth=10) == "too_deep"


def test_depth_bomb_refused_fast() -> None:
    bomb = _envelope(body="<a>" * 100_000 + "</a>" * 100_000)
    started = time.perf_counter()
    assert _code(bomb) == "too_deep"
    assert time.perf_counter() - started < 0.5


def test_huge_text_node_needs_opt_in() -> None:
    big = _envelope(body="<kv:inhoud xmlns:kv='urn:kv'>" + "A" * 11_000_000 + "</kv:inhoud>")
    assert _code(big) == "malformed"
    assert len(parse_envelope(big, allow_huge_text=True).payload.text or "") == 11_000_000


@pytest.mark.parametrize(
    "data",
    [
        _envelope().decode().encode("utf-16"),
        b'<?xml version="1.0" encoding="ISO-8859-1"?>' + _envelope(),
    ],
    ids=["utf-16", "latin-1"],
)
def test_only_utf8(data: bytes) -> None:
    assert _code(data) == "unsupported_encoding"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "malformed"),
        (b"<s:Envelope", "malformed"),
        (b"not xml at all", "malformed"),
        (_envelope().replace(b"</s:Body>", b""), "malformed"),
        (_envelope().replace(SOAP11_NS.encode(), SOAP12_NS.encode()), "not_soap11"),
        (b"<foo/>", "not_soap11"),
        (_envelope().replace(b"</s:Body>", b"</s:Body><s:Body><x/></s:Body>"), "multiple_bodies"),
        (_envelope().replace(b"</s:Header>", b"</s:Header><s:Header/>"), "bad_structure"),
        (_envelope().replace(b"</s:Body>", b"</s:Body><extra/>"), "bad_structure"),
        (_envelope().replace(b"<s:Body>", b"junk<s:Body>"), "bad_structure"),
        (_envelope(body=""), "bad_body"),
        (_envelope(body="<a/><b/>"), "bad_body"),
        (_envelope(body="text<a/>"), "bad_body"),
        (
            f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Header/></s:Envelope>'.encode(),
            "missing_body",
        ),
        (
            f'<s:Envelope xmlns:s="{SOAP11_NS}"><s:Body><x/></s:Body><s:Header/>'
            "</s:Envelope>".encode(),
            "bad_structure",
        ),
    ],
)
def test_structure_errors(data: bytes, code: str) -> None:
    assert _code(data) == code


def test_non_bytes_refused() -> None:
    with pytest.raises(SoapError) as info:
        parse_envelope(_envelope().decode())  # type: ignore[arg-type]
    assert info.value.code == "malformed"


def test_comments_and_pis_around_payload_are_fine() -> None:
    parsed = parse_envelope(_envelope(body="<!-- c --><?pi?><kv:x xmlns:kv='urn:kv'/><!-- d -->"))
    assert parsed.payload.tag == "{urn:kv}x"


# --------------------------------------------------------------------------- addressing

TO_H = f"<wsa:To>{TO}</wsa:To>"
ACTION_H = f"<wsa:Action>{AANLEVER_ACTION}</wsa:Action>"
MID_H = "<wsa:MessageID>urn:uuid:1</wsa:MessageID>"


@pytest.mark.parametrize(
    ("wsa", "code"),
    [
        (ACTION_H + MID_H, "missing_wsa_to"),
        (TO_H + MID_H, "missing_wsa_action"),
        (TO_H + ACTION_H, "missing_wsa_messageid"),
        ("<wsa:To> </wsa:To>" + ACTION_H + MID_H, "missing_wsa_to"),
        (TO_H + TO_H + ACTION_H + MID_H, "duplicate_header"),
        (TO_H + ACTION_H + ACTION_H + MID_H, "duplicate_header"),
        (TO_H + ACTION_H + MID_H + "<wsa:RelatesTo>a</wsa:RelatesTo>" * 2, "duplicate_header"),
        (TO_H + "<wsa:Action><x/></wsa:Action>" + MID_H, "bad_wsa_header"),
        (
            TO_H
            + ACTION_H
            + MID_H
            + "<wsa:ReplyTo><wsa:Address>https://evil/</wsa:Address></wsa:ReplyTo>",
            "reply_to_not_anonymous",
        ),
        (
            TO_H
            + ACTION_H
            + MID_H
            + f"<wsa:ReplyTo><wsa:Address>{WSA_NS}/none</wsa:Address></wsa:ReplyTo>",
            "reply_to_not_anonymous",
        ),
        (TO_H + ACTION_H + MID_H + "<wsa:ReplyTo/>", "bad_wsa_header"),
        (
            TO_H
            + ACTION_H
            + MID_H
            + "<wsa:FaultTo><wsa:Address>https://evil/</wsa:Address></wsa:FaultTo>",
            "wsa_address_not_allowed",
        ),
        (TO_H + ACTION_H + MID_H + "<my:Custom xmlns:my='urn:my'/>", "unknown_header"),
        (TO_H + ACTION_H + MID_H + "<wsa:Unknown/>", "unknown_header"),
        (
            TO_H
            + ACTION_H
            + MID_H
            + f"<my:C xmlns:my='urn:my' s:mustUnderstand='1' xmlns:s='{SOAP11_NS}'/>",
            "not_understood",
        ),
    ],
)
def test_addressing_errors(wsa: str, code: str) -> None:
    assert _code(_envelope(wsa=wsa)) == code


def test_addressing_values() -> None:
    parsed = parse_envelope(
        _envelope(
            wsa=f"<wsa:To> {TO}\n</wsa:To>{ACTION_H}{MID_H}"
            f"<wsa:ReplyTo><wsa:Address>{WSA_ANONYMOUS}</wsa:Address></wsa:ReplyTo>"
            f"<wsa:FaultTo><wsa:Address>{WSA_NS}/none</wsa:Address></wsa:FaultTo>"
        )
    )
    assert parsed.to == TO
    assert parsed.reply_to == WSA_ANONYMOUS
    assert set(parsed.wsa_headers) == {"To", "Action", "MessageID", "ReplyTo", "FaultTo"}


def test_custom_headers_only_when_allowed() -> None:
    data = _envelope(headers="<my:Custom xmlns:my='urn:my'/>")
    assert _code(data) == "unknown_header"
    assert parse_envelope(data, allow_unknown_headers=True).to == TO
    must = _envelope(
        headers=f"<my:C xmlns:my='urn:my' xmlns:s='{SOAP11_NS}' s:mustUnderstand='1'/>"
    )
    assert _code(must, allow_unknown_headers=True) == "not_understood"


def test_error_messages_are_short() -> None:
    with pytest.raises(SoapError) as info:
        parse_envelope(_envelope(headers=f"<my:{'X' * 5000} xmlns:my='urn:my'/>"))
    assert len(str(info.value)) < 300


@pytest.mark.parametrize("wsdl", sorted(p.name for p in OUR_WSDLS.glob("*.wsdl")))
def test_wcf_actions_from_the_port_type_name_are_operations_in_that_form(wsdl: str) -> None:
    """WCF/svcutil derive actions from the portType name (``AanleverService_V1_2``)."""
    tree = etree.parse(str(OUR_WSDLS / wsdl))
    ns = {"wsdl": "http://schemas.xmlsoap.org/wsdl/"}
    target_ns = tree.getroot().get("targetNamespace")
    (port_type,) = tree.xpath("//wsdl:portType/@name", namespaces=ns)
    names = tree.xpath("//wsdl:portType/wsdl:operation/@name", namespaces=ns)
    assert names
    for name in names:
        wcf = f"{target_ns}{port_type}/{name}"
        op = operation_for_action(wcf + "Request") or EXTRA_OPERATIONS.get(wcf + "Request")
        assert op is not None, wcf
        assert op.name == name
        assert (op.response_action, op.fault_action) == (wcf + "Response", wcf + "/Fault/")
