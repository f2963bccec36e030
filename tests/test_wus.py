"""Koppelvlak WUS end to end: real mutual TLS, real SOAP clients, real PostgreSQL/RabbitMQ.

Happy path through the pipeline, the statusinformatieservice, response signatures checked
by xmlsec1, every refusal with its foutcode (and nothing delivered), size limits and
concurrency, WSDL serving, the CLI test client."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from lxml import etree

from adapters.wus import conformance
from adapters.wus.client import Bijlage, WusClient, WusFault, aanlever_request
from adapters.wus.wsdl import AANLEVER_PATH, STATUS_PATH
from digipoort import metrics
from digipoort.cli import main as cli_main
from digipoort.wus.soap import (
    AANLEVERSERVICE_NS,
    DS_NS,
    KOPPELVLAK_NS,
    SOAP11_NS,
    STATUSINFORMATIESERVICE_NS,
    WSA_NS,
    WSSE_NS,
    WSU_NS,
    build_envelope,
)
from digipoort.wus.wssign import sign_envelope
from tests.support import (
    ALFA,
    BELASTINGDIENST,
    BETA,
    SAMPLES,
    Env,
    unique_aanleverkenmerk,
    wait_for,
)

AANLEVER_ACTION = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"
STATUS_ACTION = STATUSINFORMATIESERVICE_NS + "StatusinformatieService/{}Request"
KV = f"{{{KOPPELVLAK_NS}}}"
NS = {"s": SOAP11_NS, "wsa": WSA_NS, "wsse": WSSE_NS, "wsu": WSU_NS, "ds": DS_NS}
HAPPY = ["105", "100", "110", "200", "301", "405", "400"]
OMZETBELASTING = (SAMPLES / "omzetbelasting.xml").read_bytes()
XMLSEC1 = shutil.which("xmlsec1")


@dataclass
class Wus:
    env: Env
    url: str

    @property
    def pki(self) -> Path:
        return self.env.dir / "pki"

    def client(
        self, stem: str = ALFA, *, algorithm: str = "sha256", sign_as: str | None = None
    ) -> WusClient:
        client = WusClient(
            self.url,
            self.pki / f"{stem}.crt",
            self.pki / f"{stem}.key",
            self.pki / "ca.crt",
            algorithm=algorithm,  # type: ignore[arg-type]
        )
        if sign_as is not None:  # TLS as `stem`, WS-Security signature as `sign_as`
            other = WusClient(
                self.url,
                self.pki / f"{sign_as}.crt",
                self.pki / f"{sign_as}.key",
                self.pki / "ca.crt",
            )
            client.key, client.certificate = other.key, other.certificate
        return client

    def ssl_context(self, stem: str | None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        if stem is not None:
            context.load_cert_chain(str(self.pki / f"{stem}.crt"), str(self.pki / f"{stem}.key"))
        return context

    async def envelope_count(self) -> int:
        return int(await (await self.env.conn()).fetchval("SELECT count(*) FROM envelopes"))


@pytest_asyncio.fixture(loop_scope="session")
async def wus(env: Env) -> AsyncIterator[Wus]:
    await env.start_gateway()
    yield Wus(env, env.settings.wus.public_url)


def omzetbelasting_request(**kw: Any) -> etree._Element:
    args: dict[str, Any] = {
        "berichtsoort": "Omzetbelasting",
        "belanghebbende": (ALFA, "OIN"),
        "inhoud": Bijlage("text/xml", "omzetbelasting.xml", OMZETBELASTING),
        "aanleverkenmerk": unique_aanleverkenmerk(),
    }
    args.update(kw)
    return aanlever_request(**args)


async def send(
    client: WusClient, body: bytes, *, path: str = AANLEVER_PATH, action: str = AANLEVER_ACTION
) -> tuple[int, bytes]:
    status, response, _der = await client.post_raw(path, action, body)
    return status, response


def foutcode_of(response: bytes) -> str:
    root = etree.fromstring(response)
    code = root.findtext(f".//{KV}foutcode")
    assert code, response[:500]
    return code


def resign(doc: etree._Element, client: WusClient) -> bytes:
    """Recompute the SignatureValue after changing SignedInfo (a validly signed variant)."""
    signed_info = doc.find(".//ds:SignedInfo", NS)
    assert signed_info is not None
    data = etree.tostring(signed_info, method="c14n", exclusive=True)
    value = client.key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    sv = doc.find(".//ds:SignatureValue", NS)
    assert sv is not None
    sv.text = base64.b64encode(value).decode()
    return etree.tostring(doc)


def drop_reference(doc: etree._Element, target: etree._Element) -> None:
    target_id = target.get(f"{{{WSU_NS}}}Id")
    for ref in doc.findall(".//ds:Reference", NS):
        if ref.get("URI") == f"#{target_id}":
            ref.getparent().remove(ref)  # type: ignore[union-attr]
            return
    raise AssertionError("reference not found")


# --------------------------------------------------------------------------- happy path


async def test_aanleveren_then_status_until_400_and_new_statuses_once(wus: Wus) -> None:
    async with wus.client() as client:
        answer = await client.aanleveren(
            omzetbelasting_request(
                ontvanger=(BELASTINGDIENST, "OIN"),
                autorisatie_adres="http://geenausp.nl",
                aanleverkenmerk="test-1",
            )
        )
        kenmerk = answer["kenmerk"]
        assert answer["berichtsoort"] == "Omzetbelasting" and answer["aanleverkenmerk"] == "test-1"
        assert answer["tijdstempelAangeleverd"].endswith("Z")

        async def delivered() -> list[dict[str, Any]] | None:
            statuses = await client.status("getStatussenProces", kenmerk=kenmerk)
            return statuses if any(s["statuscode"] == "400" for s in statuses) else None

        statuses = await wait_for(delivered, what="status 400 via WUS")
        assert [s["statuscode"] for s in statuses] == HAPPY

        first = await client.status("getNieuweStatussenProces", kenmerk=kenmerk)
        assert [s["statuscode"] for s in first] == HAPPY
        assert await client.status("getNieuweStatussenProces", kenmerk=kenmerk) == []

        # The message reached the recipient, with the sender's OIN from the certificate.
        [msg] = await wus.env.queue_messages(BELASTINGDIENST, expect=1)
        assert msg.message_id == kenmerk
        doc = etree.fromstring(msg.body)
        assert doc.findtext(f"{KV}identiteitAanleveraar") == ALFA

        # getProcessen / getBerichtsoorten / getNieuweStatussen
        action = STATUS_ACTION.format("getProcessen")
        payload = await client.call(
            STATUS_PATH,
            action,
            _status_payload("getProcessen", berichtsoort="Omzetbelasting", ident=(ALFA, "OIN")),
        )
        assert [e.text for e in payload.iter(f"{KV}kenmerk")] == [kenmerk]
        assert "Omzetbelasting" in await client.berichtsoorten((ALFA, "OIN"))
        assert "DigiInkoop-Order" not in await client.berichtsoorten((ALFA, "OIN"))
        news = await client.status(
            "getNieuweStatussen",
            berichtsoort="Omzetbelasting",
            identiteitBelanghebbende=(ALFA, "OIN"),
        )
        # "new" is shared by both nieuwe-operations: each status reaches a caller once
        assert news == []


def _status_payload(op: str, *, berichtsoort: str, ident: tuple[str, str]) -> etree._Element:
    from adapters.wus.client import status_request

    return status_request(op, berichtsoort=berichtsoort, identiteitBelanghebbende=ident)


async def test_nieuwe_statussen_windows_and_each_status_once(wus: Wus) -> None:
    async with wus.client() as client:
        kenmerk = (await client.aanleveren(omzetbelasting_request()))["kenmerk"]
        await wus.env.wait_status(uuid.UUID(kenmerk), "400")
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (
            await client.status(
                "getNieuweStatussenProces", kenmerk=kenmerk, tijdstempelVanaf=future
            )
            == []
        )
        past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        # concurrent callers of the same OIN: every status exactly once overall
        results = await asyncio.gather(
            *(
                client.status("getNieuweStatussenProces", kenmerk=kenmerk, tijdstempelVanaf=past)
                for _ in range(5)
            )
        )
        codes = sorted(s["statuscode"] for r in results for s in r)
        assert codes == sorted(HAPPY)
        # getStatussenProces always returns the full history; tijdstempelTot in the past: none
        assert len(await client.status("getStatussenProces", kenmerk=kenmerk)) == len(HAPPY)
        assert await client.status("getStatussenProces", kenmerk=kenmerk, tijdstempelTot=past) == []


async def test_bijlagen_and_all_fields_reach_the_recipient(wus: Wus) -> None:
    async with wus.client() as client:
        request = omzetbelasting_request(
            bijlagen=[Bijlage("application/pdf", "bijlage.pdf", b"%PDF-1.4 test")],
            ontvanger=(BELASTINGDIENST, "OIN"),
            rol_belanghebbende="Intermediair",
        )
        answer = await client.aanleveren(request)
        [msg] = await wus.env.queue_messages(BELASTINGDIENST, expect=1)
        doc = etree.fromstring(msg.body)
        assert doc.findtext(f"{KV}kenmerk") == answer["kenmerk"]
        assert doc.findtext(f"{KV}rolBelanghebbende") == "Intermediair"
        bijlage = doc.find(f"{KV}berichtBijlagen/{KV}bijlage")
        assert bijlage is not None
        assert base64.b64decode(bijlage.findtext(f"{KV}inhoud") or "") == b"%PDF-1.4 test"
        assert doc.findtext(f"{KV}berichtkenmerk", "").startswith("urn:uuid:")


# --------------------------------------------------------------------------- response signatures


@pytest.mark.skipif(XMLSEC1 is None, reason="xmlsec1 not installed")
async def test_responses_verify_with_xmlsec1_and_follow_the_profile(
    wus: Wus, tmp_path: Path
) -> None:
    for algorithm in ("sha256", "sha1"):
        async with wus.client(algorithm=algorithm) as client:
            message_id, body = client.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request())
            status, response, _ = await client.post_raw(AANLEVER_PATH, AANLEVER_ACTION, body)
            assert status == 200, response[:400]
        root = etree.fromstring(response)
        assert root.findtext(".//wsa:RelatesTo", namespaces=NS) == message_id
        assert (
            root.findtext(".//wsa:To", namespaces=NS)
            == "http://www.w3.org/2005/08/addressing/anonymous"
        )
        refs = root.findall(".//ds:Reference", NS)
        ids = {r.get("URI", "")[1:] for r in refs}
        parts = {
            etree.QName(e).localname
            for e in root.iter()
            if isinstance(e.tag, str) and e.get(f"{{{WSU_NS}}}Id") in ids
        }
        assert parts == {"Timestamp", "To", "MessageID", "Action", "RelatesTo", "Body"}
        method = root.find(".//ds:SignatureMethod", NS)
        assert method is not None and method.get("Algorithm", "").endswith(
            "rsa-sha1" if algorithm == "sha1" else "rsa-sha256"
        )
        signed = tmp_path / f"response-{algorithm}.xml"
        signed.write_bytes(response)
        id_args = [a for n in sorted(parts) for a in ("--id-attr:Id", n)]
        server_cert = tmp_path / "server.pem"
        server_cert.write_bytes(
            (wus.pki / "server.crt").read_bytes().split(b"-----END CERTIFICATE-----")[0]
            + b"-----END CERTIFICATE-----\n"
        )
        result = subprocess.run(
            [
                str(XMLSEC1),
                "--verify",
                "--pubkey-cert-pem",
                str(server_cert),
                *id_args,
                str(signed),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "SignedInfo References (ok/all): 6/6" in result.stderr
        tampered = tmp_path / "tampered.xml"
        tampered.write_bytes(response.replace(b"Omzetbelasting", b"Omzetbelastin."))
        result = subprocess.run(
            [
                str(XMLSEC1),
                "--verify",
                "--pubkey-cert-pem",
                str(server_cert),
                *id_args,
                str(tampered),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode != 0


# --------------------------------------------------------------------------- refusals


async def _handshake_fails(wus: Wus, stem: str | None) -> None:
    host, port = "localhost", wus.env.settings.wus.port
    context = wus.ssl_context(stem)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError, asyncio.IncompleteReadError)):
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        try:
            # TLS 1.3: the client learns of the rejection on its first read
            writer.write(b"GET /wus/2.0/aanleverservice/1.2?wsdl HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            data = await reader.read(100)
            if not data:
                raise ConnectionError("closed by the server")
        finally:
            writer.close()


async def test_tls_refuses_missing_untrusted_expired_and_revoked_certificates(wus: Wus) -> None:
    for stem in (None, "untrusted", "expired", "revoked"):
        await _handshake_fails(wus, stem)
    # a good certificate passes the same path
    context = wus.ssl_context(ALFA)
    reader, writer = await asyncio.open_connection(
        "localhost", wus.env.settings.wus.port, ssl=context
    )
    writer.write(
        b"GET /wus/2.0/aanleverservice/1.2?wsdl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = await reader.read()
    writer.close()
    assert data.startswith(b"HTTP/1.1 200")
    assert await wus.envelope_count() == 0


async def test_refusals_each_get_their_code_and_nothing_is_delivered(wus: Wus) -> None:
    before = metrics.WUS_REQUESTS.labels("aanleveren", "refused", "ALS120")._value.get()
    cases: dict[str, tuple[str, bytes]] = {}
    async with wus.client() as client:

        def signed_doc(**kw: Any) -> etree._Element:
            _mid, body = client.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request(**kw))
            return etree.fromstring(body)

        # unsigned Body: a valid signature that simply does not cover the Body
        doc = signed_doc()
        drop_reference(doc, doc.find("s:Body", NS))  # type: ignore[arg-type]
        cases["unsigned body"] = ("ALS120", resign(doc, client))

        # Body altered after signing
        doc = signed_doc()
        kenmerk_el = doc.find(f".//{KV}aanleverkenmerk")
        assert kenmerk_el is not None
        kenmerk_el.text = "altered"
        cases["body altered"] = ("ALS120", etree.tostring(doc))

        # signature wrapping: the signed Body moved into the Security header, a new Body
        doc = signed_doc()
        body = doc.find("s:Body", NS)
        assert body is not None
        security = doc.find(".//wsse:Security", NS)
        assert security is not None
        wrapper = etree.SubElement(security, "{urn:evil}Wrapper")
        doc.remove(body)
        wrapper.append(body)
        evil = copy.deepcopy(body)
        del evil.attrib[f"{{{WSU_NS}}}Id"]
        evil.find(f".//{KV}aanleverkenmerk").text = "evil"  # type: ignore[union-attr]
        doc.append(evil)
        cases["signature wrapping"] = ("ALS120", etree.tostring(doc))

        # an unsigned wsa header (To's reference dropped, validly re-signed)
        doc = signed_doc()
        drop_reference(doc, doc.find(".//wsa:To", NS))  # type: ignore[arg-type]
        cases["unsigned wsa:To"] = ("ALS120", resign(doc, client))

        # duplicate Ids: the token gets the Body's wsu:Id as well
        doc = signed_doc()
        body_id = doc.find("s:Body", NS).get(f"{{{WSU_NS}}}Id")  # type: ignore[union-attr]
        token = doc.find(".//wsse:BinarySecurityToken", NS)
        assert token is not None and body_id
        token.set(f"{{{WSU_NS}}}Id", body_id)
        cases["duplicate Ids"] = ("ALS120", etree.tostring(doc))

        # wsa:ReplyTo other than anonymous (signed)
        envelope = build_envelope(
            omzetbelasting_request(),
            action=AANLEVER_ACTION,
            to=wus.url + AANLEVER_PATH,
            reply_to_anonymous=True,
        )
        envelope.find(".//wsa:ReplyTo/wsa:Address", NS).text = "https://evil.example/"  # type: ignore[union-attr]
        cases["ReplyTo not anonymous"] = (
            "ALS100",
            sign_envelope(envelope, client.key, client.certificate),
        )

        # missing Timestamp (removed together with its reference, then re-signed)
        doc = signed_doc()
        timestamp = doc.find(".//wsu:Timestamp", NS)
        assert timestamp is not None
        drop_reference(doc, timestamp)
        timestamp.getparent().remove(timestamp)  # type: ignore[union-attr]
        cases["missing timestamp"] = ("ALS130", resign(doc, client))

        # stale timestamp
        envelope = build_envelope(
            omzetbelasting_request(), action=AANLEVER_ACTION, to=wus.url + AANLEVER_PATH
        )
        stale = sign_envelope(
            envelope, client.key, client.certificate, now=datetime.now(UTC) - timedelta(hours=1)
        )
        cases["stale timestamp"] = ("ALS130", stale)

        # missing wsa:Action
        envelope = build_envelope(
            omzetbelasting_request(), action=AANLEVER_ACTION, to=wus.url + AANLEVER_PATH
        )
        action = envelope.find(".//wsa:Action", NS)
        action.getparent().remove(action)  # type: ignore[union-attr]
        cases["missing wsa:Action"] = (
            "ALS100",
            sign_envelope(envelope, client.key, client.certificate),
        )

        # wrong wsa:To
        envelope = build_envelope(
            omzetbelasting_request(), action=AANLEVER_ACTION, to="https://elders.example/wus"
        )
        cases["wrong wsa:To"] = ("ALS100", sign_envelope(envelope, client.key, client.certificate))

        # unknown berichtsoort; not authorised for a berichtsoort; recipient not allowed
        cases["unknown berichtsoort"] = (
            "ALS140",
            client.sign(
                AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request(berichtsoort="Onbekend")
            )[1],
        )
        cases["not authorised"] = (
            "ALS150",
            client.sign(
                AANLEVER_PATH,
                AANLEVER_ACTION,
                omzetbelasting_request(berichtsoort="DigiInkoop-Order"),
            )[1],
        )
        cases["recipient not allowed"] = (
            "ALS150",
            client.sign(
                AANLEVER_PATH,
                AANLEVER_ACTION,
                omzetbelasting_request(ontvanger=("00000099200000020000", "OIN")),
            )[1],
        )

        # invalid base64; a field over its documented length
        doc = signed_doc()
        inhoud = doc.find(f".//{KV}inhoud")
        assert inhoud is not None
        envelope = build_envelope(
            omzetbelasting_request(), action=AANLEVER_ACTION, to=wus.url + AANLEVER_PATH
        )
        envelope.find(f".//{KV}inhoud").text = "!!!not base64###"  # type: ignore[union-attr]
        cases["invalid base64"] = (
            "ALS100",
            sign_envelope(envelope, client.key, client.certificate),
        )
        cases["aanleverkenmerk over 40"] = (
            "ALS100",
            client.sign(
                AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request(aanleverkenmerk="x" * 41)
            )[1],
        )

        # XXE and entity expansion
        signed = client.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request())[1]
        xml_decl_end = signed.index(b"?>") + 2
        cases["XXE"] = (
            "ALS100",
            signed[:xml_decl_end]
            + b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
            + signed[xml_decl_end:],
        )
        cases["entity expansion"] = (
            "ALS100",
            signed[:xml_decl_end]
            + b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
            + signed[xml_decl_end:],
        )
        cases["not XML"] = ("ALS100", b"this is not xml")

        # sha1 is allowed by default: a sha1 request passes (checked in another test)

        for name, (expected, body) in cases.items():
            status, response = await send(client, body)
            assert status == 500, name
            assert foutcode_of(response) == expected, name
            root = etree.fromstring(response)
            assert root.find(".//wsse:Security", NS) is None, f"{name}: faults are unsigned"

        # replay: the same signed request twice
        _mid, body = client.sign(
            AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request(berichtsoort="Onbekend")
        )
        assert foutcode_of((await send(client, body))[1]) == "ALS140"
        assert foutcode_of((await send(client, body))[1]) == "ALS130"

        # SOAPAction differing from wsa:Action
        _mid, body = client.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request())
        status, response = await send(client, body, action=STATUS_ACTION.format("getProcessen"))
        assert foutcode_of(response) == "ALS100"

    # BST OIN differs from the TLS OIN: TLS as Alfa, signed by Beta
    async with wus.client(ALFA, sign_as=BETA) as mixed:
        _mid, body = mixed.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request())
        assert foutcode_of((await send(mixed, body))[1]) == "ALS110"
    # BST certificate revoked (TLS certificate fine, same OIN)
    async with wus.client(ALFA, sign_as="revoked") as revoked:
        _mid, body = revoked.sign(AANLEVER_PATH, AANLEVER_ACTION, omzetbelasting_request())
        assert foutcode_of((await send(revoked, body))[1]) == "ALS110"

    assert metrics.WUS_REQUESTS.labels("aanleveren", "refused", "ALS120")._value.get() >= before + 3
    assert await wus.envelope_count() == 0
    assert await wus.env.queue_messages(BELASTINGDIENST, expect=1, timeout=0.5) == []


async def test_status_of_someone_elses_kenmerk_is_a_fault_like_an_unknown_one(wus: Wus) -> None:
    async with wus.client(BETA) as beta:
        kenmerk = (await beta.aanleveren(omzetbelasting_request(belanghebbende=(BETA, "OIN"))))[
            "kenmerk"
        ]
        assert await beta.status("getStatussenProces", kenmerk=kenmerk)
    async with wus.client(ALFA) as alfa:
        faults = []
        for probe in (kenmerk, "0c8a1f4e-0000-4000-8000-000000000000", "not-a-uuid"):
            for op in ("getStatussenProces", "getNieuweStatussenProces"):
                with pytest.raises(WusFault) as fault:
                    await alfa.status(op, kenmerk=probe)
                faults.append((fault.value.foutcode, fault.value.foutbeschrijving))
        assert set(faults) == {faults[0]} and faults[0][0] == "STS150"
        with pytest.raises(WusFault) as fault:
            await alfa.status(
                "getNieuweStatussen",
                berichtsoort="Bestaat-Niet",
                identiteitBelanghebbende=(ALFA, "OIN"),
            )
        assert fault.value.foutcode == "STS140"
        # Alfa sees nothing of Beta's envelopes through the berichtsoort queries either
        assert (
            await alfa.status(
                "getNieuweStatussen",
                berichtsoort="Omzetbelasting",
                identiteitBelanghebbende=(BETA, "OIN"),
            )
            == []
        )


async def test_belanghebbende_with_the_same_autorisatieadres_may_follow_the_envelope(
    wus: Wus,
) -> None:
    async with wus.client(BETA) as beta:
        kenmerk = (
            await beta.aanleveren(
                omzetbelasting_request(
                    belanghebbende=(ALFA, "OIN"), autorisatie_adres="http://asp.example/alfa"
                )
            )
        )["kenmerk"]
    async with wus.client(ALFA) as alfa:
        with pytest.raises(WusFault):
            await alfa.status("getStatussenProces", kenmerk=kenmerk)
        assert await alfa.status(
            "getStatussenProces", kenmerk=kenmerk, autorisatieAdres="http://asp.example/alfa"
        )


async def test_inhoud_over_20_mib_is_refused_as_too_large(wus: Wus) -> None:
    async with wus.client() as client:
        request = omzetbelasting_request(
            inhoud=Bijlage("text/xml", "groot.xml", b"<a>" + b"x" * (20 * 1024 * 1024) + b"</a>")
        )
        with pytest.raises(WusFault) as fault:
            await client.aanleveren(request)
        assert fault.value.foutcode == "ALS160"
    assert await wus.envelope_count() == 0


async def test_large_document_just_under_the_limit_is_accepted(wus: Wus) -> None:
    content = b"<a>" + b"y" * (12 * 1024 * 1024) + b"</a>"
    async with wus.client() as client:
        answer = await client.aanleveren(
            omzetbelasting_request(inhoud=Bijlage("text/xml", "groot.xml", content))
        )
    assert answer["kenmerk"]


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def test_100_mb_request_is_cut_off_early_with_flat_memory(wus: Wus) -> None:
    port = wus.env.settings.wus.port
    cap = wus.env.settings.wus.max_request_bytes
    context = wus.ssl_context(ALFA)
    rss_before = _rss()

    # 1. a declared Content-Length over the cap: refused before any body byte is read
    reader, writer = await asyncio.open_connection("localhost", port, ssl=context)
    writer.write(
        f"POST {AANLEVER_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        f'SOAPAction: "{AANLEVER_ACTION}"\r\nContent-Length: {100 * 1024 * 1024}\r\n\r\n'.encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.read(65536), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 500") and b"ALS160" in head

    # 2. chunked, no length: cut off once the cap is passed
    reader, writer = await asyncio.open_connection("localhost", port, ssl=context)
    writer.write(
        f"POST {AANLEVER_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        f'SOAPAction: "{AANLEVER_ACTION}"\r\nTransfer-Encoding: chunked\r\n\r\n'.encode()
    )
    chunk = b"<" + b"a" * (1024 * 1024 - 1)
    sent = 0

    async def pump() -> None:
        nonlocal sent
        for _ in range(100):
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
            sent += len(chunk)

    pumping = asyncio.create_task(pump())
    response = await asyncio.wait_for(reader.read(65536), 60)
    pumping.cancel()
    await asyncio.gather(pumping, return_exceptions=True)
    writer.close()
    assert response.startswith(b"HTTP/1.1 500") and b"ALS160" in response
    assert sent < 100 * 1024 * 1024 and sent <= cap + 8 * 1024 * 1024
    assert _rss() - rss_before < 120 * 1024 * 1024


async def test_status_endpoint_takes_at_most_1_mib(wus: Wus) -> None:
    async with wus.client() as client:
        body = b"<x>" + b"y" * (2 * 1024 * 1024) + b"</x>"
        action = STATUS_ACTION.format("getStatussenProces")
        status, response = await send(client, body, path=STATUS_PATH, action=action)
        assert status == 500 and foutcode_of(response) == "STS160"


async def test_a_slow_request_does_not_block_other_clients(wus: Wus) -> None:
    context = wus.ssl_context(ALFA)
    _reader, writer = await asyncio.open_connection(
        "localhost", wus.env.settings.wus.port, ssl=context
    )
    writer.write(
        f"POST {AANLEVER_PATH} HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
        f'SOAPAction: "{AANLEVER_ACTION}"\r\nContent-Length: 100000\r\n\r\n<soapenv:Env'.encode()
    )
    await writer.drain()
    started = time.monotonic()
    async with wus.client() as client:
        answers = await asyncio.gather(
            *(client.aanleveren(omzetbelasting_request()) for _ in range(5))
        )
    assert all(a["kenmerk"] for a in answers)
    assert time.monotonic() - started < 10
    writer.close()


async def test_sha1_is_accepted_by_default(wus: Wus) -> None:
    async with wus.client(algorithm="sha1") as client:
        assert (await client.aanleveren(omzetbelasting_request()))["kenmerk"]


async def test_sha1_can_be_switched_off(env: Env) -> None:
    env.settings.wus.allow_sha1 = False
    await env.start_gateway()
    wus = Wus(env, env.settings.wus.public_url)
    async with wus.client(algorithm="sha1") as client:
        with pytest.raises(WusFault) as fault:
            await client.aanleveren(omzetbelasting_request())
        assert fault.value.foutcode == "ALS120"
    async with wus.client(algorithm="sha256") as client:
        assert (await client.aanleveren(omzetbelasting_request()))["kenmerk"]


# --------------------------------------------------------------------------- WSDL


def _wsdl_shape(root: etree._Element) -> dict[str, Any]:
    w = "http://schemas.xmlsoap.org/wsdl/"
    soap = "http://schemas.xmlsoap.org/wsdl/soap/"
    wsaw = "http://www.w3.org/2006/05/addressing/wsdl"
    return {
        "tns": root.get("targetNamespace"),
        "messages": sorted(
            (m.get("name"), p.get("element")) for m in root.iter(f"{{{w}}}message") for p in m
        ),
        "operations": sorted(
            (
                op.get("name"),
                tuple(
                    sorted(
                        (c.get("name"), c.get("message"), c.get(f"{{{wsaw}}}Action")) for c in op
                    )
                ),
            )
            for pt in root.iter(f"{{{w}}}portType")
            for op in pt
        ),
        "actions": sorted(o.get("soapAction") for o in root.iter(f"{{{soap}}}operation")),
        "services": sorted(
            (s.get("name"), p.get("name")) for s in root.iter(f"{{{w}}}service") for p in s
        ),
    }


async def test_wsdls_and_xsd_are_served_with_our_address(wus: Wus) -> None:
    published = Path(__file__).resolve().parents[1] / "adapters/wus/specs"
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=wus.ssl_context(ALFA))
    ) as http:
        for path, name in (
            (AANLEVER_PATH, "aanleverservice"),
            (STATUS_PATH, "statusinformatieservice"),
        ):
            async with http.get(wus.url + path + "?wsdl") as r:
                assert r.status == 200
                served = etree.fromstring(await r.read())
            original = etree.parse(str(published / "wsdl" / f"{name}-1.2.wsdl")).getroot()
            assert _wsdl_shape(served) == _wsdl_shape(original)
            [address] = served.iter("{http://schemas.xmlsoap.org/wsdl/soap/}address")
            assert address.get("location") == wus.url + path
            [imp] = served.iter("{http://www.w3.org/2001/XMLSchema}import")
            async with http.get(imp.get("schemaLocation", "")) as r:
                assert r.status == 200
                assert await r.read() == (published / "digipoort-koppelvlak-1.2.xsd").read_bytes()
    shared = Path("/work/shared/specs/wus/wsdl")
    if shared.is_dir():
        for f in shared.iterdir():
            assert (published / "wsdl" / f.name).read_bytes() == f.read_bytes()


# --------------------------------------------------------------------------- conformance


EXPECTED_SCENARIOS: dict[str, tuple[str | None, str | None, list[str]]] = {
    # scenario: (aanleverFault foutcode, statusinformatieFault foutcode, status codes)
    "Happyflow": (None, None, ["105", "100", "110", "200", "301", "405", "400", "500"]),
    "AanleverFault": ("ALS100", None, []),
    "StatusInformatieFault": (None, "STS100", []),
    "Afleverfout": (None, None, ["105", "100", "110", "200", "301", "405", "410"]),
    "Foutuitvragendepartij": (None, None, ["105", "100", "110", "200", "301", "405", "400", "510"]),
    "TechnischProbleemAfleveren": (None, None, ["105", "100", "110", "200", "301", "405", "420"]),
    "MaximaalAantalAfleverpogingen": (
        None,
        None,
        ["105", "100", "110", "200", "301", "405", "420", "420", "420", "410"],
    ),
    "ZwaarbelastAanleveren": (None, None, ["105", "100", "110", "200", "301", "405", "400", "500"]),
    "OverbelastAanleveren": ("ALS400", None, []),
    "ZwaarbelastStatusInformatie": (
        None,
        None,
        ["105", "100", "110", "200", "301", "405", "400", "500"],
    ),
    "OverbelastStatusInformatie": (None, "STS400", []),
}


async def test_every_conformance_scenario(wus: Wus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conformance, "ZWAARBELAST_DELAY", 0.3)
    assert {s.lower() for s in EXPECTED_SCENARIOS} == set(conformance.SCENARIOS)
    async with wus.client() as client:
        assert "TEST" in await client.berichtsoorten((ALFA, "OIN"))
        for scenario, (aanlever_fault, status_fault, codes) in EXPECTED_SCENARIOS.items():
            request = omzetbelasting_request(berichtsoort="TEST", aanleverkenmerk=scenario)
            started = time.monotonic()
            if aanlever_fault:
                with pytest.raises(WusFault) as fault:
                    await client.aanleveren(request)
                assert fault.value.foutcode == aanlever_fault, scenario
                continue
            kenmerk = (await client.aanleveren(request))["kenmerk"]
            if scenario == "ZwaarbelastAanleveren":
                assert time.monotonic() - started >= 0.3
            started = time.monotonic()
            if status_fault:
                with pytest.raises(WusFault) as fault:
                    await client.status("getStatussenProces", kenmerk=kenmerk)
                assert fault.value.foutcode == status_fault, scenario
                continue
            statuses = await client.status("getNieuweStatussenProces", kenmerk=kenmerk)
            assert [s["statuscode"] for s in statuses] == codes, scenario
            if scenario == "ZwaarbelastStatusInformatie":
                assert time.monotonic() - started >= 0.3
            failing = [s for s in statuses if s["statuscode"] in ("410", "420")]
            assert all(s["foutcode"] for s in failing), scenario
    # conformance envelopes never enter the pipeline
    assert await wus.env.queue_messages(BELASTINGDIENST, expect=1, timeout=0.3) == []


# --------------------------------------------------------------------------- CLI


async def test_cli_submit_and_status_via_wus(wus: Wus) -> None:
    runner = CliRunner()
    pki = wus.pki
    common = [
        "--cert",
        str(pki / f"{ALFA}.crt"),
        "--key",
        str(pki / f"{ALFA}.key"),
        "--url",
        wus.url,
    ]
    sample = SAMPLES / "omzetbelasting.xml"
    result = await asyncio.to_thread(
        runner.invoke,
        cli_main,
        [
            "submit",
            "--via",
            "wus",
            *common,
            "--berichtsoort",
            "Omzetbelasting",
            "--ontvanger",
            BELASTINGDIENST,
            "--bijlage",
            str(sample),
            "--json",
            str(sample),
        ],
    )
    assert result.exit_code == 0, result.output
    kenmerk = json.loads(result.output)["kenmerk"]
    await wus.env.wait_status(uuid.UUID(kenmerk), "400")
    result = await asyncio.to_thread(
        runner.invoke, cli_main, ["status", kenmerk, "--via", "wus", *common, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert [s["code"] for s in json.loads(result.stdout)] == HAPPY
    result = await asyncio.to_thread(
        runner.invoke,
        cli_main,
        ["submit", *common, "--berichtsoort", "Onbekend", str(sample)],
    )
    assert result.exit_code == 2 and "ALS140" in result.output
