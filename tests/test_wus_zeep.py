"""Wire compatibility: a zeep client generated from the *published* WSDLs (unchanged but
for the endpoint address) submits and follows statuses.

zeep's own ``BinarySignature`` signs only Body and Timestamp, not the WS-Addressing
headers the Digipoort profile requires, so the request is signed by ``WusXmlsecSignature``
below: a zeep wsse plugin built like zeep's BinarySignature on python-xmlsec (libxmlsec1,
an implementation independent of ours) that also signs every wsa header, with rsa-sha1
as the published profile and today's clients do. It verifies our responses with xmlsec
against the gateway certificate. Nothing of ``adapters.wus`` is used on the client side.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import requests
import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree
from zeep import Client, Plugin, ns
from zeep.exceptions import Fault
from zeep.transports import Transport
from zeep.wsa import WsAddressingPlugin
from zeep.wsse.signature import _make_sign_key, _make_verify_key, _verify_envelope_with_key
from zeep.wsse.utils import WSU, ensure_id, get_security_header

from tests.support import ALFA, BELASTINGDIENST, SAMPLES, Env, wait_for

SPECS = Path(__file__).resolve().parents[1] / "adapters/wus/specs/wsdl"
AANLEVER_BINDING = (
    "{http://logius.nl/digipoort/wus/2.0/aanleverservice/1.2/}AanleverServiceSoapBinding_V1_2"
)
STATUS_BINDING = (
    "{http://logius.nl/digipoort/wus/2.0/statusinformatieservice/1.2/}"
    "StatusinformatieServiceSoapBinding_V1_2"
)
X509V3 = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
BASE64 = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)
HAPPY = ["105", "100", "110", "200", "301", "405", "400"]


def _first_pem(path: Path) -> bytes:
    return x509.load_pem_x509_certificates(path.read_bytes())[0].public_bytes(Encoding.PEM)


class WusXmlsecSignature:
    """zeep wsse plugin: Timestamp + X.509 BinarySecurityToken + one signature over the
    Timestamp, every WS-Addressing header and the Body (python-xmlsec)."""

    def __init__(self, key_file: Path, cert_file: Path, server_cert_file: Path) -> None:
        self.key_data = key_file.read_bytes()
        self.cert_data = _first_pem(cert_file)
        self.server_cert = _first_pem(server_cert_file)

    def apply(self, envelope: Any, headers: Any) -> tuple[Any, Any]:
        soap_env = envelope.nsmap.get("soap-env") or etree.QName(envelope).namespace
        header = envelope.find(f"{{{soap_env}}}Header")
        body = envelope.find(f"{{{soap_env}}}Body")
        security = get_security_header(envelope)
        created = datetime.now(UTC)
        timestamp = WSU.Timestamp(
            WSU.Created(created.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"),
            WSU.Expires((created + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")),
        )
        security.append(timestamp)
        token = etree.SubElement(
            security,
            f"{{{ns.WSSE}}}BinarySecurityToken",
            {"ValueType": X509V3, "EncodingType": BASE64},
        )
        der = x509.load_pem_x509_certificate(self.cert_data).public_bytes(Encoding.DER)
        token.text = base64.b64encode(der).decode()
        token_id = ensure_id(token)

        signature = xmlsec.template.create(
            envelope, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA1
        )
        key_info = xmlsec.template.ensure_key_info(signature)
        security.append(signature)
        ctx = xmlsec.SignatureContext()
        ctx.key = _make_sign_key(self.key_data, self.cert_data, None)
        wsa_headers = [h for h in header if etree.QName(h).namespace == ns.WSA]
        assert {etree.QName(h).localname for h in wsa_headers} == {"To", "Action", "MessageID"}
        for target in [timestamp, *wsa_headers, body]:
            node_id = ensure_id(target)
            ctx.register_id(target, "Id", ns.WSU)
            ref = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA1, uri="#" + node_id)
            xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
        ctx.sign(signature)
        reference = etree.SubElement(
            etree.SubElement(key_info, f"{{{ns.WSSE}}}SecurityTokenReference"),
            f"{{{ns.WSSE}}}Reference",
            {"URI": "#" + token_id, "ValueType": X509V3},
        )
        assert reference is not None
        return envelope, headers

    def verify(self, envelope: Any) -> Any:
        soap_env = etree.QName(envelope).namespace
        if envelope.find(f"{{{soap_env}}}Body/{{{soap_env}}}Fault") is not None:
            return envelope  # Digipoort faults are not signed (profile)
        _verify_envelope_with_key(envelope, _make_verify_key(self.server_cert))
        return envelope


class WcfActions(Plugin):
    """What a WCF (svcutil) client of these WSDLs sends: the action named after the
    portType (``…/AanleverService_V1_2/aanleverenRequest``) as wsa:Action and SOAPAction.
    Records the wsa:Action of every answer."""

    def __init__(self) -> None:
        self.answers: list[str] = []

    def egress(self, envelope: Any, http_headers: Any, operation: Any, options: Any) -> Any:
        port_type = etree.QName(operation.binding.port_type.name).localname  # …Service_V1_2
        published = port_type.removesuffix("_V1_2")
        action = envelope.find(f".//{{{ns.WSA}}}Action")
        action.text = action.text.replace(f"/{published}/", f"/{port_type}/")
        http_headers["SOAPAction"] = f'"{action.text}"'
        return envelope, http_headers

    def ingress(self, envelope: Any, http_headers: Any, operation: Any) -> Any:
        self.answers.append(envelope.findtext(f".//{{{ns.WSA}}}Action"))
        return envelope, http_headers


class ZeepParticipant:
    def __init__(self, pki: Path, oin: str, url: str, *, wcf: bool = False) -> None:
        self.wcf = WcfActions()
        plugins = [WsAddressingPlugin(), self.wcf] if wcf else [WsAddressingPlugin()]
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would override session.verify
        session.cert = (str(pki / f"{oin}.crt"), str(pki / f"{oin}.key"))
        session.verify = str(pki / "ca.crt")
        signer = WusXmlsecSignature(pki / f"{oin}.key", pki / f"{oin}.crt", pki / "server.crt")
        self.aanlever_client = Client(
            str(SPECS / "aanleverservice-1.2.wsdl"),
            transport=Transport(session=session),
            wsse=signer,
            plugins=plugins,
        )
        self.status_client = Client(
            str(SPECS / "statusinformatieservice-1.2.wsdl"),
            transport=Transport(session=session),
            wsse=signer,
            plugins=plugins,
        )
        # The only change: the endpoint address.
        self.aanlever = self.aanlever_client.create_service(
            AANLEVER_BINDING, url + "/wus/2.0/aanleverservice/1.2"
        )
        self.status = self.status_client.create_service(
            STATUS_BINDING, url + "/wus/2.0/statusinformatieservice/1.2"
        )


@pytest_asyncio.fixture(loop_scope="session")
async def participant(env: Env) -> AsyncIterator[ZeepParticipant]:
    await env.start_gateway()
    yield await asyncio.to_thread(
        ZeepParticipant, env.dir / "pki", ALFA, env.settings.wus.public_url
    )


async def test_published_wsdl_client_submits_and_follows_statuses(
    env: Env, participant: ZeepParticipant
) -> None:
    content = (SAMPLES / "omzetbelasting.xml").read_bytes()
    response = await asyncio.to_thread(
        participant.aanlever.aanleveren,
        berichtsoort="Omzetbelasting",
        aanleverkenmerk="zeep-1",
        identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"},
        rolBelanghebbende="Bedrijf",
        identiteitOntvanger={"nummer": BELASTINGDIENST, "type": "OIN"},
        berichtInhoud={"mimeType": "text/xml", "bestandsnaam": "ob.xml", "inhoud": content},
        autorisatieAdres="http://geenausp.nl",
    )
    kenmerk = response.kenmerk
    assert uuid.UUID(kenmerk)
    assert response.berichtsoort == "Omzetbelasting"
    assert response.aanleverkenmerk == "zeep-1"
    assert response.identiteitOntvanger.nummer == BELASTINGDIENST
    assert response.autorisatieAdres == "http://geenausp.nl"
    assert response.tijdstempelAangeleverd is not None

    async def delivered() -> list[Any] | None:
        statuses = await asyncio.to_thread(participant.status.getStatussenProces, kenmerk=kenmerk)
        return statuses if any(s.statuscode == "400" for s in statuses) else None

    statuses = await wait_for(delivered, what="status 400 via zeep")
    assert [s.statuscode for s in statuses] == HAPPY
    assert all(s.identiteitBelanghebbende.nummer == ALFA for s in statuses)

    first = await asyncio.to_thread(participant.status.getNieuweStatussenProces, kenmerk=kenmerk)
    assert [s.statuscode for s in first] == HAPPY
    again = await asyncio.to_thread(participant.status.getNieuweStatussenProces, kenmerk=kenmerk)
    assert not again

    soorten = await asyncio.to_thread(
        participant.status.getBerichtsoorten,
        identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"},
    )
    assert "Omzetbelasting" in soorten
    processen = await asyncio.to_thread(
        participant.status.getProcessen,
        berichtsoort="Omzetbelasting",
        identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"},
    )
    assert [p.kenmerk for p in processen] == [kenmerk]

    [msg] = await env.queue_messages(BELASTINGDIENST, expect=1)
    assert msg.message_id == kenmerk


async def test_published_wsdl_client_gets_wsdl_faults(participant: ZeepParticipant) -> None:
    with pytest.raises(Fault) as fault:
        await asyncio.to_thread(
            participant.aanlever.aanleveren,
            berichtsoort="Onbekend",
            identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"},
            rolBelanghebbende="Bedrijf",
            berichtInhoud={"mimeType": "text/xml", "bestandsnaam": "x.xml", "inhoud": b"<x/>"},
        )
    detail = fault.value.detail
    assert detail is not None
    kv = "{http://logius.nl/digipoort/koppelvlakservices/1.2/}"
    assert detail.findtext(f"{kv}aanleverFault/{kv}foutcode") == "ALS140"

    with pytest.raises(Fault) as fault:
        await asyncio.to_thread(participant.status.getStatussenProces, kenmerk=str(uuid.uuid4()))
    assert fault.value.detail.findtext(f"{kv}statusinformatieFault/{kv}foutcode") == "STS150"


async def test_wcf_action_form_is_accepted_and_answered_in_kind(env: Env) -> None:
    """Issue 11 section 3: WCF's ``…Service_V1_2/<op>Request`` actions, answers in kind."""
    await env.start_gateway()
    wcf = await asyncio.to_thread(
        ZeepParticipant, env.dir / "pki", ALFA, env.settings.wus.public_url, wcf=True
    )
    response = await asyncio.to_thread(
        wcf.aanlever.aanleveren,
        berichtsoort="Omzetbelasting",
        identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"},
        rolBelanghebbende="Bedrijf",
        berichtInhoud={
            "mimeType": "text/xml",
            "bestandsnaam": "ob.xml",
            "inhoud": (SAMPLES / "omzetbelasting.xml").read_bytes(),
        },
    )
    assert uuid.UUID(response.kenmerk)
    soorten = await asyncio.to_thread(
        wcf.status.getBerichtsoorten, identiteitBelanghebbende={"nummer": ALFA, "type": "OIN"}
    )
    assert "Omzetbelasting" in soorten
    with pytest.raises(Fault):
        await asyncio.to_thread(wcf.status.getStatussenProces, kenmerk=str(uuid.uuid4()))
    base = "http://logius.nl/digipoort/wus/2.0/"
    assert wcf.wcf.answers == [
        f"{base}aanleverservice/1.2/AanleverService_V1_2/aanleverenResponse",
        f"{base}statusinformatieservice/1.2/StatusinformatieService_V1_2/getBerichtsoortenResponse",
        f"{base}statusinformatieservice/1.2/StatusinformatieService_V1_2/getStatussenProces/Fault/",
    ]
