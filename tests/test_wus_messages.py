"""adapters.wus.messages: the koppelvlak request documents parsed per the XSD (pure)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from lxml import etree

from adapters.wus import conformance
from adapters.wus.addressing import EndpointAddresses, endpoint_key
from adapters.wus.client import Bijlage, aanlever_request, status_request
from adapters.wus.messages import (
    INHOUD_MAX_BYTES,
    InhoudTooLarge,
    RequestInvalid,
    aanlever_response,
    parse_aanlever_request,
    parse_status_request,
)
from digipoort.wus.soap import KOPPELVLAK_NS

KV = f"{{{KOPPELVLAK_NS}}}"
ALFA = "00000099100000010000"


def request(**kw: object) -> etree._Element:
    args: dict[str, object] = {
        "berichtsoort": "Omzetbelasting",
        "belanghebbende": (ALFA, "OIN"),
        "inhoud": Bijlage("text/xml", "a.xml", b"<a/>"),
    }
    args.update(kw)
    return aanlever_request(**args)  # type: ignore[arg-type]


def test_all_fields_are_read() -> None:
    element = request(
        aanleverkenmerk="  mijn   kenmerk ",
        ontvanger=("00000099200000010000", "OIN"),
        bijlagen=[Bijlage("application/pdf", "b.pdf", b"%PDF")],
        autorisatie_adres="http://geenausp.nl",
        rol_belanghebbende="Intermediair",
    )
    v = parse_aanlever_request(element)
    assert v.berichtsoort == "Omzetbelasting"
    assert v.aanleverkenmerk == "mijn kenmerk"  # xs:normalizedString, whiteSpace collapse
    assert v.belanghebbende.nummer == ALFA and v.belanghebbende.type == "OIN"
    assert v.rol_belanghebbende == "Intermediair"
    assert v.ontvanger is not None and v.ontvanger.nummer == "00000099200000010000"
    assert v.inhoud.content == b"<a/>" and v.inhoud.bestandsnaam == "a.xml"
    assert [b.content for b in v.bijlagen] == [b"%PDF"]
    assert v.autorisatie_adres == "http://geenausp.nl"
    response = aanlever_response(v, "k-1", datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC))
    names = [etree.QName(c).localname for c in response]
    assert names == [
        "kenmerk",
        "berichtsoort",
        "aanleverkenmerk",
        "tijdstempelAangeleverd",
        "identiteitBelanghebbende",
        "rolBelanghebbende",
        "identiteitOntvanger",
        "autorisatieAdres",
    ]
    assert response.findtext(f"{KV}tijdstempelAangeleverd") == "2026-01-02T03:04:05.006Z"


@pytest.mark.parametrize(
    ("field", "limit"),
    [("aanleverkenmerk", 40), ("berichtsoort", 80), ("rol_belanghebbende", 40)],
)
def test_documented_length_limits(field: str, limit: int) -> None:
    parse_aanlever_request(request(**{field: "x" * limit}))
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(**{field: "x" * (limit + 1)}))


def test_identity_and_document_limits() -> None:
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(belanghebbende=("1" * 36, "OIN")))
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(belanghebbende=(ALFA, "T" * 21)))
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(inhoud=Bijlage("text/xml", "n" * 81, b"x")))
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(inhoud=Bijlage("m" * 256, "a.xml", b"x")))
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(request(autorisatie_adres="http://" + "a" * 250))


def test_order_unknown_elements_and_required_ones() -> None:
    element = request(aanleverkenmerk="k")
    berichtsoort = element.find(f"{KV}berichtsoort")
    assert berichtsoort is not None
    element.remove(berichtsoort)
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(element)
    element = request(aanleverkenmerk="k")
    kenmerk = element.find(f"{KV}aanleverkenmerk")
    assert kenmerk is not None
    element.remove(kenmerk)
    element.append(kenmerk)  # out of order
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(element)
    element = request()
    etree.SubElement(element, f"{KV}onbekend").text = "x"
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(element)
    element = request()
    etree.SubElement(element, "{urn:other}autorisatieAdres").text = "x"
    with pytest.raises(RequestInvalid):
        parse_aanlever_request(element)


def test_base64_strict_and_size_limit() -> None:
    element = request()
    inhoud = element.find(f"{KV}berichtInhoud/{KV}inhoud")
    assert inhoud is not None
    inhoud.text = "PGEv\nPg=="  # line breaks are fine
    assert parse_aanlever_request(element).inhoud.content == b"<a/>"
    for bad in ("PGEv!Pg==", "PGEvPg=", "€€€€"):
        inhoud.text = bad
        with pytest.raises(RequestInvalid):
            parse_aanlever_request(element)
    inhoud.text = base64.b64encode(b"x" * (INHOUD_MAX_BYTES + 1)).decode()
    with pytest.raises(InhoudTooLarge):
        parse_aanlever_request(element)
    inhoud.text = base64.b64encode(b"x" * INHOUD_MAX_BYTES).decode()
    assert len(parse_aanlever_request(element).inhoud.content or b"") == INHOUD_MAX_BYTES


def test_status_requests() -> None:
    v = parse_status_request(
        "getNieuweStatussenProces",
        status_request(
            "getNieuweStatussenProces",
            kenmerk="abc",
            tijdstempelVanaf="2026-01-01T00:00:00Z",
            tijdstempelTot="2026-01-02T00:00:00+01:00",
        ),
    )
    assert v.kenmerk == "abc"
    assert v.vanaf == datetime(2026, 1, 1, tzinfo=UTC)
    assert v.tot is not None and v.tot.utcoffset() is not None
    with pytest.raises(RequestInvalid):
        parse_status_request(
            "getStatussenProces",
            status_request("getStatussenProces", kenmerk="abc", tijdstempelVanaf="gisteren"),
        )
    with pytest.raises(RequestInvalid):
        parse_status_request("getStatussenProces", status_request("getStatussenProces"))
    with pytest.raises(RequestInvalid):  # element of another operation
        parse_status_request("getProcessen", status_request("getStatussenProces", kenmerk="abc"))
    v = parse_status_request(
        "getProcessen",
        status_request(
            "getProcessen", berichtsoort="Omzetbelasting", identiteitBelanghebbende=(ALFA, "OIN")
        ),
    )
    assert v.belanghebbende is not None and v.belanghebbende.nummer == ALFA


def test_conformance_scenarios_are_the_published_eleven() -> None:
    assert sorted(s.name for s in conformance.SCENARIOS.values()) == sorted(
        [
            "Happyflow",
            "AanleverFault",
            "StatusInformatieFault",
            "Afleverfout",
            "Foutuitvragendepartij",
            "TechnischProbleemAfleveren",
            "MaximaalAantalAfleverpogingen",
            "ZwaarbelastAanleveren",
            "OverbelastAanleveren",
            "ZwaarbelastStatusInformatie",
            "OverbelastStatusInformatie",
        ]
    )
    assert conformance.scenario_for(None).name == "Happyflow"
    assert conformance.scenario_for("afleverFOUT").name == "Afleverfout"


# --------------------------------------------------------------------------- wsa:To as a URL

_ADDRESSES = EndpointAddresses("https://localhost:8443", ["https://dgp.example.nl"])


@pytest.mark.parametrize(
    ("to", "ours"),
    [
        ("https://localhost:8443/wus/2.0/aanleverservice/1.2", True),
        ("HTTPS://LOCALHOST:8443/wus/2.0/aanleverservice/1.2/", True),
        ("https://dgp.example.nl/wus/2.0/aanleverservice/1.2", True),
        ("https://dgp.example.nl:443/wus/2.0/aanleverservice/1.2", True),
        ("https://DGP.Example.NL./wus/2.0/aanleverservice/1.2", True),
        ("  https://dgp.example.nl/wus/2.0/aanleverservice/1.2  ", True),
        ("http://dgp.example.nl/wus/2.0/aanleverservice/1.2", False),  # other scheme
        ("https://dgp.example.nl:8443/wus/2.0/aanleverservice/1.2", False),
        ("https://localhost/wus/2.0/aanleverservice/1.2", False),  # 443, not 8443
        ("https://localhost:8443/WUS/2.0/aanleverservice/1.2", False),  # path case
        ("https://localhost:8443/wus/2.0/statusinformatieservice/1.2", False),
        ("https://localhost:8443/wus/2.0/aanleverservice/1.2?x=1", False),
        ("https://localhost:8443/wus/2.0/aanleverservice/1.2#f", False),
        ("https://user@localhost:8443/wus/2.0/aanleverservice/1.2", False),
        ("https://localhost:99999/wus/2.0/aanleverservice/1.2", False),  # port out of range
        ("https://localhost:8443/" + "a" * 3000, False),
        ("urn:uuid:1", False),
        ("", False),
    ],
)
def test_wsa_to_is_compared_as_a_url(to: str, ours: bool) -> None:
    assert _ADDRESSES.is_service(to, "/wus/2.0/aanleverservice/1.2") is ours


def test_accepted_urls_must_be_http_urls() -> None:
    with pytest.raises(ValueError):
        EndpointAddresses("https://localhost:8443", ["dgp.example.nl"])
    assert endpoint_key("https://[::1]/x/") == ("https", "::1", 443, "/x", "")
