# ruff: noqa: E501 - the tables keep one case per line
"""Hostile and unusual input on the HTTP ports: WUS, Grote Berichten, metrics/health.

One table per protocol; a new case is one line. Each table runs against one real gateway
(mutual TLS, real PostgreSQL/RabbitMQ): every row is sent, and all mismatches are
reported together. The rows name the issue they came from (issue 11).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import pytest_asyncio
from lxml import etree

from adapters.wus.client import Bijlage, WusClient
from adapters.wus.soap import (
    KOPPELVLAK_NS,
    SOAP11_NS,
    WSA_FAULT_ACTION,
    WSA_NS,
    build_envelope,
)
from adapters.wus.wssecurity import sign_envelope
from routing.statusreports import build_zet_status
from tests.support import ALFA, BELASTINGDIENST, Env
from tests.test_wus import omzetbelasting_request

KV: Final = f"{{{KOPPELVLAK_NS}}}"
WUS: Final = "http://logius.nl/digipoort/wus/2.0/"
#: Another public name of the gateway (wus.accepted_urls), default port implied.
OTHER_NAME: Final = "https://digipoort.example.nl"
EDGE_LOW: Final = "0001-01-01T00:00:00+14:00"
EDGE_HIGH: Final = "9999-12-31T23:59:59-14:00"

# operation -> (service, published port, endpoint path, foutcode prefix)
OPERATIONS: Final = {
    **{
        op: ("statusinformatieservice", "StatusinformatieService", "STS")
        for op in (
            "getStatussenProces",
            "getNieuweStatussenProces",
            "getNieuweStatussen",
            "getProcessen",
            "getBerichtsoorten",
        )
    },
    **{
        op: ("ophaalservice", "OphaalService", "OHS")
        for op in (
            "getBerichten",
            "getNieuweBerichten",
            "getBerichtenLijst",
            "getNieuweBerichtenLijst",
            "getBerichtenKenmerk",
            "getNieuweBerichtenKenmerk",
        )
    },
    "aanleveren": ("aanleverservice", "AanleverService", "ALS"),
    "zetStatus": ("statusservice", "StatusService", "ZSS"),
}


def _kv(tag: str, *children: tuple[str, str | tuple[str, str]]) -> etree._Element:
    root = etree.Element(KV + tag, nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    for name, value in children:
        el = etree.SubElement(root, KV + name)
        if isinstance(value, tuple):
            etree.SubElement(el, KV + "nummer").text = value[0]
            etree.SubElement(el, KV + "type").text = value[1]
        else:
            el.text = value
    return root


def _payload(op: str, **extra: str) -> etree._Element:
    """A valid request body for ``op`` by its default caller; ``extra`` appends fields."""
    kenmerk = str(uuid.uuid4())
    ident = ("identiteitBelanghebbende", (ALFA, "OIN"))
    if op == "aanleveren":
        return omzetbelasting_request(aanleverkenmerk=f"hostile-{kenmerk[:8]}")
    if op == "zetStatus":
        root = etree.fromstring(build_zet_status(kenmerk, "500"))
        for name, value in extra.items():
            root.find(KV + name).text = value  # type: ignore[union-attr]
        return root
    fields: dict[str, list[tuple[str, str | tuple[str, str]]]] = {
        "getStatussenProces": [("kenmerk", kenmerk)],
        "getNieuweStatussenProces": [("kenmerk", kenmerk)],
        "getNieuweStatussen": [("berichtsoort", "Omzetbelasting"), ident],
        "getProcessen": [("berichtsoort", "Omzetbelasting"), ident],
        "getBerichtsoorten": [ident],
        "getBerichten": [("berichtsoort", "DigiInkoop-Order"), ident],
        "getNieuweBerichten": [("berichtsoort", "DigiInkoop-Order"), ident],
        "getBerichtenLijst": [("berichtsoort", "DigiInkoop-Order")],
        "getNieuweBerichtenLijst": [("berichtsoort", "DigiInkoop-Order")],
        "getBerichtenKenmerk": [("kenmerk", kenmerk)],
        "getNieuweBerichtenKenmerk": [("kenmerk", kenmerk)],
    }
    return _kv(f"{op}Request", *fields[op], *extra.items())


def _bad_inhoud(where: str, value: str) -> Callable[[], etree._Element]:
    def build() -> etree._Element:
        payload = omzetbelasting_request(bijlagen=[Bijlage("text/plain", "b.txt", b"bijlage")])
        path = "berichtBijlagen/" + KV + "bijlage" if where == "bijlage" else "berichtInhoud"
        target = payload.find(f"{KV}{path}/{KV}inhoud")
        assert target is not None
        target.text = value
        return payload

    return build


def _namespace_bomb(n: int) -> Callable[[bytes], bytes]:
    """Declarations on the (unsigned) Envelope: the signature stays valid."""
    decls = b" ".join(b'xmlns:p%d="urn:hostile:%d"' % (i, i) for i in range(n))
    return lambda body: body.replace(b"<soapenv:Envelope ", b"<soapenv:Envelope " + decls + b" ")


def _random_id(length: int) -> str:
    """An incompressible wsa:MessageID (PostgreSQL compresses repetitive index keys)."""
    return ("urn:x:" + "".join(uuid.uuid4().hex for _ in range(length // 32 + 1)))[:length]


@dataclass(frozen=True)
class Soap:
    """One signed SOAP request and the answer it must get."""

    name: str
    op: str
    expect: str  # "ok" or the foutcode
    wcf: bool = False  # WCF's action form (portType name ``…Service_V1_2``)
    payload: Callable[[], etree._Element] | None = None
    to: str = "{public}{path}"  # wsa:To; {public} = wus.public_url, {path} = endpoint path
    soapaction: str | None = None  # the SOAPAction header, when it differs from wsa:Action
    message_id: str | None = None
    raw: Callable[[bytes], bytes] | None = None  # edits the signed bytes
    caller: str = ALFA
    understood: bool = True  # False: refused before wsa:Action is read (generic fault action)

    def action(self, kind: str = "Request") -> str:
        service, port, _ = OPERATIONS[self.op]
        port += "_V1_2" if self.wcf else ""
        return f"{WUS}{service}/1.2/{port}/{self.op}{kind}"

    @property
    def path(self) -> str:
        return f"/wus/2.0/{OPERATIONS[self.op][0]}/1.2"


#: Operations on a random (unknown) kenmerk: accepted, and answered with their own fault.
ANSWER: Final = {
    "getStatussenProces": "STS150",
    "getNieuweStatussenProces": "STS150",
    "getBerichtenKenmerk": "OHS150",
    "getNieuweBerichtenKenmerk": "OHS150",
    "zetStatus": "ZSS150",
}

SOAP_CASES: Final = [
    # section 3: both action forms, every operation of every service
    *(Soap(f"{op} published", op, ANSWER.get(op, "ok")) for op in OPERATIONS),
    *(Soap(f"{op} WCF", op, ANSWER.get(op, "ok"), wcf=True) for op in OPERATIONS),
    # section 3: wsa:To as a URL
    Soap("To: scheme/host case, trailing slash", "aanleveren", "ok", to="HTTPS://LOCALHOST{port}{path}/"),
    Soap("To: accepted other name, default port", "getBerichtsoorten", "ok", to=OTHER_NAME.upper() + ":443{path}"),
    Soap("To: other name without port", "aanleveren", "ok", wcf=True, to=OTHER_NAME + "{path}/"),
    Soap("To: foreign host", "aanleveren", "ALS100", to="https://evil.example{path}"),
    Soap("To: foreign host (WCF)", "getProcessen", "STS100", wcf=True, to="https://evil.example{path}"),
    Soap("To: other port", "aanleveren", "ALS100", to="https://localhost:1{path}"),
    Soap("To: path case differs", "aanleveren", "ALS100", to="{public}/WUS/2.0/aanleverservice/1.2"),
    Soap("To: not a URL", "aanleveren", "ALS100", to="urn:digipoort"),
    # section 3: early refusals carry the operation's fault action
    Soap("SOAPAction differs", "aanleveren", "ALS100", soapaction="urn:other"),
    Soap("SOAPAction differs (WCF)", "zetStatus", "ZSS100", wcf=True, soapaction="urn:other"),
    Soap("wrong body", "aanleveren", "ALS100", payload=lambda: _payload("getBerichtsoorten")),
    Soap("wrong body (WCF)", "getBerichtenLijst", "OHS100", wcf=True, payload=lambda: _payload("getProcessen")),
    # section 4: identifiers bounded and hashed
    Soap("MessageID 256 characters", "aanleveren", "ok", message_id=_random_id(256)),
    Soap("MessageID 3000 characters", "aanleveren", "ALS100", message_id=_random_id(3000), understood=False),
    Soap("MessageID 3000 characters (status)", "getBerichtsoorten", "STS100", message_id=_random_id(3000), understood=False),
    # section 4: edge xs:dateTimes are client faults
    Soap("tijdstempelVanaf 0001 +14:00", "getNieuweStatussen", "STS100", payload=lambda: _payload("getNieuweStatussen", tijdstempelVanaf=EDGE_LOW)),
    Soap("tijdstempelTot 9999 -14:00", "getNieuweStatussen", "STS100", payload=lambda: _payload("getNieuweStatussen", tijdstempelTot=EDGE_HIGH)),
    Soap("ophaal tijdstempelTot 9999 -14:00", "getBerichtenLijst", "OHS100", payload=lambda: _payload("getBerichtenLijst", tijdstempelTot=EDGE_HIGH)),
    Soap("ophaal tijdstempelVanaf 0001 +14:00", "getNieuweBerichtenKenmerk", "OHS100", payload=lambda: _payload("getNieuweBerichtenKenmerk", tijdstempelVanaf=EDGE_LOW)),
    Soap("zetStatus tijdstempelStatus 0001 +14:00", "zetStatus", "ZSS100", caller=BELASTINGDIENST, payload=lambda: _payload("zetStatus", tijdstempelStatus=EDGE_LOW)),
    Soap("zetStatus tijdstempelStatus 9999 -14:00", "zetStatus", "ZSS100", caller=BELASTINGDIENST, payload=lambda: _payload("zetStatus", tijdstempelStatus=EDGE_HIGH)),
    # section 4: base64 decoded strictly
    Soap("inhoud QUJD=", "aanleveren", "ALS100", payload=_bad_inhoud("inhoud", "QUJD=")),
    Soap("inhoud QR==", "aanleveren", "ALS100", payload=_bad_inhoud("inhoud", "QR==")),
    Soap("bijlage QR==", "aanleveren", "ALS100", payload=_bad_inhoud("bijlage", "QR==")),
    Soap("bijlage canonical", "aanleveren", "ok", payload=_bad_inhoud("bijlage", "QUJD")),
    # section 4: namespace declarations bounded before c14n
    Soap("12 000 namespace declarations", "aanleveren", "ALS100", raw=_namespace_bomb(12_000), understood=False),
    Soap("200 namespace declarations", "aanleveren", "ok", raw=_namespace_bomb(200)),
]  # fmt: skip


# ------------------------------------------------------------------ running the tables


@dataclass
class Gateway:
    env: Env

    @property
    def public(self) -> str:
        return self.env.settings.wus.public_url

    def client(self, stem: str) -> WusClient:
        pki = self.env.dir / "pki"
        return WusClient(self.public, pki / f"{stem}.crt", pki / f"{stem}.key", pki / "ca.crt")


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(env: Env) -> AsyncIterator[Gateway]:
    env.settings.wus.accepted_urls = [OTHER_NAME]
    await env.start_gateway()
    yield Gateway(env)


def _answer(body: bytes) -> tuple[str, str | None]:
    """(wsa:Action, foutcode or None) of a SOAP answer."""
    root = etree.fromstring(body)
    action = root.findtext(f"{{{SOAP11_NS}}}Header/{{{WSA_NS}}}Action") or ""
    return action, root.findtext(f".//{KV}foutcode")


async def _send(gw: Gateway, clients: dict[str, WusClient], case: Soap) -> str | None:
    """None if the answer is as expected, else what differs."""
    client = clients[case.caller]
    port = gw.public.rsplit(":", 1)[1]
    to = case.to.format(public=gw.public, path=case.path, port=f":{port}")
    envelope = build_envelope(
        (case.payload or (lambda: _payload(case.op)))(),
        action=case.action(),
        to=to,
        message_id=case.message_id,
    )
    body = sign_envelope(envelope, client.key, client.certificate)
    if case.raw is not None:
        body = case.raw(body)
    status, answer, _ = await client.post_raw(case.path, case.soapaction or case.action(), body)
    action, foutcode = _answer(answer)
    if case.expect == "ok":
        expected = (200, case.action("Response"), None)
    else:
        fault_action = case.action("/Fault/") if case.understood else WSA_FAULT_ACTION
        expected = (500, fault_action, case.expect)
    got = (status, action, foutcode)
    return None if got == expected else f"{case.name}: expected {expected}, got {got}"


async def test_soap_table(gateway: Gateway) -> None:
    clients = {stem: gateway.client(stem) for stem in (ALFA, BELASTINGDIENST)}
    try:
        problems = [await _send(gateway, clients, case) for case in SOAP_CASES]
    finally:
        for c in clients.values():
            await c.close()
    bad = [p for p in problems if p]
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------ no request stalls the loop


async def _max_loop_gap(stop: asyncio.Event, tick: float = 0.005) -> float:
    """The longest the event loop went without running this task (its stall)."""
    worst, last = 0.0, time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(tick)
        now = time.perf_counter()
        worst, last = max(worst, now - last - tick), now
    return worst


async def test_a_namespace_bomb_does_not_stall_the_event_loop(gateway: Gateway) -> None:
    """12 000 namespace declarations in a validly signed aanleveren cost ~17 s of c14n
    before the fix. Now: refused, and /healthz answers meanwhile."""
    case = Soap("bomb", "aanleveren", "ALS100", raw=_namespace_bomb(12_000), understood=False)
    client = gateway.client(ALFA)
    health = f"http://127.0.0.1:{gateway.env.settings.http.port}/healthz"
    stop = asyncio.Event()
    probe = asyncio.create_task(_max_loop_gap(stop))
    try:
        async with aiohttp.ClientSession() as session:
            request = asyncio.create_task(_send(gateway, {ALFA: client}, case))
            latencies = []
            while not request.done():
                started = time.perf_counter()
                async with session.get(health) as response:
                    assert response.status == 200
                latencies.append(time.perf_counter() - started)
            assert await request is None
    finally:
        stop.set()
        await client.close()
    stall = await probe
    print(f"max loop stall {stall * 1000:.1f} ms, /healthz max {max(latencies) * 1000:.1f} ms")
    assert stall < 0.2
    assert max(latencies) < 0.2
