# ruff: noqa: E501 - the tables keep one case per line
"""Hostile and unusual input on the HTTP ports: WUS, Grote Berichten, metrics/health.

One table per protocol; a new case is one line. Each table runs against one real gateway
(mutual TLS, real PostgreSQL/RabbitMQ): every row is sent, and all mismatches are
reported together. The rows name the issue they came from (issue 11).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Final

import aiohttp
import pytest
import pytest_asyncio
import structlog.testing
from lxml import etree

from adapters.wus.afleverserver import AfleverServer
from adapters.wus.client import Bijlage, WusClient
from digipoort import httpguard
from digipoort.httpguard import HTTP_REFUSALS, HttpGuardConfig
from digipoort.pki import client_ssl_context
from digipoort.wus.soap import (
    KOPPELVLAK_NS,
    SOAP11_NS,
    WSA_FAULT_ACTION,
    WSA_NS,
    build_envelope,
)
from digipoort.wus.wssign import sign_envelope
from routing.statusreports import build_zet_status
from tests.support import ALFA, BELASTINGDIENST, Env, free_port, wait_for
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


# ------------------------------------------------------------------ the HTTP layer, every port

GUARD: Final = HttpGuardConfig(header_timeout=1.5, idle_timeout=5.0, max_per_ip=4)


@dataclass(frozen=True)
class Http:
    """Raw bytes to one port and the status line the HTTP layer must answer."""

    port: str  # "wus" (TLS, also Grote Berichten), "metrics", "aflever" (TLS)
    request: bytes
    status: int
    reason: str  # the ``reason`` label of digipoort_http_refusals_total


_GB: Final = f"/grote-berichten/{uuid.UUID(int=1)}"
AFLEVER: Final = f"{WUS}afleverservice/1.2/AfleverService/afleverenRequest".encode()
HTTP_CASES: Final = [
    # section 4 / observability: aiohttp's own refusals give one log line + one metric
    Http("metrics", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found"),
    Http("metrics", b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed"),
    Http("metrics", b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n", 400, "BadHttpMessage"),
    Http("metrics", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 400, "LineTooLong"),
    Http("metrics", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, 400, "BadHttpMethod"),
    Http("metrics", b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "BadHttpMessage"),
    Http("wus", b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found"),
    Http("wus", b"GET /wus/2.0/aanleverservice/1.2 HTTP/1.1\r\nHost: x\r\n\r\n", 404, "Not Found"),
    Http("wus", b"PUT /wus/2.0/aanleverservice/1.2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405, "Method Not Allowed"),
    Http("wus", b"DELETE " + _GB.encode() + b"/0 HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed"),
    Http("wus", b"GET /x HTTP/1.1\r\nHost: x\r\nX-\x01: y\r\n\r\n", 400, "BadHttpMessage"),
    Http("wus", b"POST /wus/2.0/aanleverservice/1.2 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400, "BadHttpMessage"),
    Http("aflever", b"GET /afleveren HTTP/1.1\r\nHost: x\r\n\r\n", 405, "Method Not Allowed"),
    Http("aflever", b"POST /a HTTP/1.1\r\nHost: x\r\nSOAPAction: " + AFLEVER + b"\r\nContent-Length: 99999999999\r\n\r\n", 413, "Request Entity Too Large"),
    Http("aflever", b"GET\x00 / HTTP/1.1\r\n\r\n", 400, "BadHttpMethod"),
]  # fmt: skip

#: Grote Berichten (section 4): answered by the download handler itself (its own metric).
GB_CASES: Final = [
    (f"{_GB}/99999", 404),  # seq beyond smallint
    (f"{_GB}/32768", 404),
    (f"{_GB}/%D9%A3", 404),  # "٣": a digit to int(), not to the path grammar
    (f"{_GB}/-1", 404),
    ("/grote-berichten/not-a-uuid/0", 404),
]


@dataclass
class Ports:
    gateway: Gateway
    aflever_port: int

    def address(self, port: str) -> tuple[str, int, ssl.SSLContext | None]:
        s = self.gateway.env.settings
        pki = self.gateway.env.dir / "pki"
        if port == "metrics":
            return "127.0.0.1", s.http.port, None
        context = client_ssl_context(pki / f"{ALFA}.crt", pki / f"{ALFA}.key", pki / "ca.crt")
        return "localhost", s.wus.port if port == "wus" else self.aflever_port, context

    async def open(self, port: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, number, context = self.address(port)
        return await asyncio.open_connection(host, number, ssl=context, limit=2**20)


@pytest_asyncio.fixture(loop_scope="session")
async def ports(env: Env, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Ports]:
    """WUS, metrics and aflever-server ports, each with a short header deadline and at most
    4 connections per client address."""
    monkeypatch.setattr(httpguard, "METRICS_PORT", GUARD)
    wus = env.settings.wus
    wus.header_timeout_seconds, wus.idle_timeout_seconds = GUARD.header_timeout, GUARD.idle_timeout
    wus.max_connections_per_ip = GUARD.max_per_ip
    await env.start_gateway()
    pki = env.dir / "pki"
    aflever = AfleverServer(
        pki / f"{BELASTINGDIENST}.crt",
        pki / f"{BELASTINGDIENST}.key",
        pki / "ca.crt",
        env.dir / "afgeleverd",
        pki / "chain.pem",
        guard=GUARD,
    )
    port = free_port()
    await aflever.start("127.0.0.1", port)
    try:
        yield Ports(Gateway(env), port)
    finally:
        await aflever.stop()


def _refusals(port: str) -> float:
    return sum(
        sample.value
        for metric in HTTP_REFUSALS.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels["port"] == port
    )


async def _exchange(ports: Ports, case: Http) -> str | None:
    before = _refusals(case.port)
    reader, writer = await ports.open(case.port)
    try:
        with structlog.testing.capture_logs() as logs:
            writer.write(case.request)
            await writer.drain()
            async with asyncio.timeout(10):
                status_line = await reader.readline()
    finally:
        writer.close()
    lines = [e for e in logs if e["event"] == "http.refused" and e["status"] == case.status]
    got = (status_line.split(b" ")[1:2], _refusals(case.port) - before, len(lines))
    expected = ([str(case.status).encode()], 1, 1)
    reason = lines[0]["reason"] if lines else None
    if got == expected and reason == case.reason:
        return None
    return (
        f"{case.port} {case.request[:40]!r}: expected {expected} {case.reason}, got {got} {reason}"
    )


async def test_http_table(ports: Ports, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        problems = [await _exchange(ports, case) for case in HTTP_CASES]
    bad = [p for p in problems if p]
    assert not bad, "\n".join(bad)
    # nothing through aiohttp's own loggers: no "Error handling request" tracebacks
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiohttp")] == []


async def test_grote_berichten_table(ports: Ports) -> None:
    host, port, context = ports.address("wus")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        got = []
        for path, _status in GB_CASES:
            async with session.get(f"https://{host}:{port}{path}") as response:
                got.append((path, response.status))
    assert got == GB_CASES


async def _dribble(ports: Ports, port: str, *, first: bytes) -> tuple[bytes, float]:
    """Send ``first``, then one header line every 0.2 s; (what came back, seconds until the
    server closed). Fails if the server keeps the request open for 10 s."""
    reader, writer = await ports.open(port)
    started = time.monotonic()
    try:
        writer.write(first)
        async with asyncio.timeout(10):
            while True:
                try:
                    answer = await asyncio.wait_for(reader.read(), 0.2)
                    return answer, time.monotonic() - started
                except TimeoutError:
                    writer.write(b"X-Slow: 1\r\n")
                    await writer.drain()
    finally:
        writer.close()


@pytest.mark.parametrize("port", ["wus", "metrics", "aflever"])
async def test_slow_headers_get_408_at_the_deadline(ports: Ports, port: str) -> None:
    before = _refusals(port)
    answer, seconds = await _dribble(ports, port, first=b"POST / HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert GUARD.header_timeout <= seconds < GUARD.header_timeout + 5
    assert _refusals(port) - before == 1


@pytest.mark.parametrize("port", ["wus", "metrics", "aflever"])
async def test_connections_per_ip_are_limited(ports: Ports, port: str) -> None:
    before = _refusals(port)
    opened = [await ports.open(port) for _ in range(GUARD.max_per_ip)]
    try:
        reader, writer = await ports.open(port)
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert _refusals(port) - before == 1
    finally:
        for _, w in opened:
            w.close()

    # the slots are free again once those connections are gone
    async def served() -> bool:
        reader, writer = await ports.open(port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        return not answer.startswith(b"HTTP/1.1 503 ")

    assert await wait_for(served, what="a free connection slot")
