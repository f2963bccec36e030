"""Grote Berichten: large documents delivered by reference and fetched over mutual TLS."""

from __future__ import annotations

import base64
import hashlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import UUID

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree

from digipoort.app import Gateway
from digipoort.payloads import PayloadStore
from digipoort.pki import CertificateVerifier
from digipoort.pki.tls import client_ssl_context, server_ssl_context
from routing.afleverrequest import NS
from routing.download import Download, parse_reference_path
from routing.grote_berichten import (
    REFERENCE_MIME_TYPE,
    RangeNotSatisfiable,
    parse_range,
    parse_reference,
)
from tests.support import BELASTINGDIENST, HBAG, Env, aanlevering, free_port

MiB = 1024 * 1024


def xml_of_size(size: int) -> bytes:
    head, tail = b"<omzet>", b"</omzet>"
    line = b"<regel>" + b"x" * 90 + b"</regel>\n"
    n = (size - len(head) - len(tail)) // len(line)
    return head + line * n + tail


def inhoud(body: bytes) -> tuple[str, bytes]:
    doc = etree.fromstring(body, etree.XMLParser(huge_tree=True))
    el = doc.find(f"{{{NS}}}berichtInhoud")
    assert el is not None
    return el.findtext(f"{{{NS}}}mimeType") or "", base64.b64decode(
        el.findtext(f"{{{NS}}}inhoud") or ""
    )


class Server:
    def __init__(self, url: str, pki: Path) -> None:
        self.url = url
        self.pki = pki

    def client(self, oin: str | None) -> aiohttp.ClientSession:
        if oin is None:
            ctx = client_ssl_context(None, None, self.pki / "ca.crt")
        else:
            ctx = client_ssl_context(
                self.pki / f"{oin}.crt", self.pki / f"{oin}.key", self.pki / "ca.crt"
            )
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


async def download_server(
    gw: Gateway, pki: Path, port: int, store: PayloadStore | None = None
) -> web.AppRunner:
    assert gw.pool is not None and gw.store is not None
    verifier = CertificateVerifier.from_files(
        pki / "ca.crt", [pki / "ca.crl"], pki / "chain.pem", require_crl=True
    )
    app = web.Application()
    Download(gw.pool, store or gw.store, verifier).add_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = server_ssl_context(pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "ca.crl")
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
    return runner


@pytest_asyncio.fixture(loop_scope="session")
async def gb(env: Env) -> AsyncIterator[tuple[Gateway, Server]]:
    port = free_port()
    env.settings.wus.public_url = f"https://localhost:{port}"
    gw = await env.start_gateway(components=("intake", "validator", "router"))
    runner = await download_server(gw, env.dir / "pki", port)
    try:
        yield gw, Server(f"https://localhost:{port}", env.dir / "pki")
    finally:
        await runner.cleanup()


async def submit_and_receive(env: Env, gw: Gateway, content: bytes) -> tuple[str, bytes, str]:
    assert gw.intake is not None
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting", content=content))
    await env.wait_status(accepted.kenmerk, "400", recipient=BELASTINGDIENST, timeout=60)
    [msg] = await env.queue_messages(BELASTINGDIENST, expect=1)
    mime, data = inhoud(msg.body)
    return mime, data, str(accepted.kenmerk)


async def test_3mib_inline_5mib_by_reference(env: Env, gb: tuple[Gateway, Server]) -> None:
    gw, _ = gb
    small = xml_of_size(3 * MiB)
    mime, data, _ = await submit_and_receive(env, gw, small)
    assert mime == "text/xml" and data == small
    large = xml_of_size(5 * MiB)
    mime, data, kenmerk = await submit_and_receive(env, gw, large)
    assert mime == REFERENCE_MIME_TYPE
    ref = parse_reference(data)
    assert ref.size == len(large) and ref.sha256 == hashlib.sha256(large).hexdigest()
    assert ref.url.endswith(f"/grote-berichten/{kenmerk}/0")
    assert ref.content_type == "text/xml" and ref.filename == "bericht.xml"


async def test_fetch_resume_and_history(env: Env, gb: tuple[Gateway, Server]) -> None:
    gw, server = gb
    large = xml_of_size(5 * MiB)
    _, data, kenmerk = await submit_and_receive(env, gw, large)
    ref = parse_reference(data)
    url = f"{server.url}/grote-berichten/{kenmerk}/0"
    async with server.client(BELASTINGDIENST) as client:
        half = len(large) // 2
        async with client.get(url, headers={"Range": f"bytes=0-{half - 1}"}) as r:
            assert r.status == 206
            assert r.headers["Content-Range"] == f"bytes 0-{half - 1}/{len(large)}"
            first = await r.read()
            etag = r.headers["ETag"]
        async with client.get(url, headers={"Range": f"bytes={half}-", "If-Range": etag}) as r:
            assert r.status == 206
            rest = await r.read()
        assert hashlib.sha256(first + rest).hexdigest() == ref.sha256
        async with client.get(url) as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(large)
            assert await r.read() == large
    history = await env.history(UUID(kenmerk))
    fetched = [s for s in history if s.code == "402"]
    assert len(fetched) == 1 and fetched[0].recipient_oin == BELASTINGDIENST


async def test_only_the_recipient_may_fetch(env: Env, gb: tuple[Gateway, Server]) -> None:
    gw, server = gb
    _, _, kenmerk = await submit_and_receive(env, gw, xml_of_size(5 * MiB))
    url = f"{server.url}/grote-berichten/{kenmerk}/0"
    async with server.client(HBAG) as client, client.get(url) as r:
        assert r.status == 404
    with pytest.raises((aiohttp.ClientError, ssl.SSLError)):
        async with server.client(None) as client, client.get(url) as r:
            await r.read()
    conn = await env.conn()
    await conn.execute("UPDATE gb_references SET expires_at = now() - interval '1 second'")
    async with server.client(BELASTINGDIENST) as client, client.get(url) as r:
        assert r.status == 410


@pytest.mark.parametrize(
    "header",
    [
        "bytes=-0",
        "bytes=5-2",
        "bytes=0-1,1-2",
        "bytes=999999999-",
        "items=0-1",
        "bytes=-",
        "bytes=a-b",
        "bytes=--5",
        "bytes=" + "9" * 300,
        "bytes=²-",  # str.isdigit() but not int(): was a 500 with a traceback
        "bytes=0-١",
    ],
)
async def test_tampered_range_gets_416(env: Env, gb: tuple[Gateway, Server], header: str) -> None:
    gw, server = gb
    _, _, kenmerk = await submit_and_receive(env, gw, xml_of_size(5 * MiB))
    async with (
        server.client(BELASTINGDIENST) as client,
        client.get(f"{server.url}/grote-berichten/{kenmerk}/0", headers={"Range": header}) as r,
    ):
        assert r.status == 416


@given(st.text(max_size=60), st.integers(min_value=0, max_value=10**12))
def test_parse_range_never_crashes(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except RangeNotSatisfiable:
        return
    assert span is not None
    start, end = span
    assert 0 <= start < end <= size


async def test_retention_removes_payloads_only_when_nothing_needs_them(
    env: Env, gb: tuple[Gateway, Server]
) -> None:
    from routing.retention import sweep_once

    gw, server = gb
    assert gw.pool is not None and gw.store is not None
    large = xml_of_size(5 * MiB)
    sha = hashlib.sha256(large).hexdigest()
    _, _, kenmerk = await submit_and_receive(env, gw, large)
    assert await sweep_once(gw.pool, gw.store, retention_seconds=0, grace_seconds=0) == 0
    assert await gw.store.size(sha) == len(large), "not fetched yet: kept"
    async with (
        server.client(BELASTINGDIENST) as client,
        client.get(f"{server.url}/grote-berichten/{kenmerk}/0") as r,
    ):
        assert await r.read() == large
    # the fetch is recorded (402) after the last byte went out: wait for it, not for luck
    await env.wait_status(kenmerk, "402", recipient=BELASTINGDIENST)
    assert await sweep_once(gw.pool, gw.store, retention_seconds=3600, grace_seconds=0) == 0
    assert await gw.store.size(sha) is not None, "within the retention period: kept"
    assert await sweep_once(gw.pool, gw.store, retention_seconds=0, grace_seconds=3600) == 0
    assert await gw.store.size(sha) is not None, "recently written: kept"
    assert await sweep_once(gw.pool, gw.store, retention_seconds=0, grace_seconds=0) == 1
    assert await gw.store.size(sha) is None
    assert await sweep_once(gw.pool, gw.store, retention_seconds=0, grace_seconds=0) == 0


class FlakyStore:
    """A payload store whose first stream breaks off halfway (a dropped connection)."""

    def __init__(self, inner: PayloadStore) -> None:
        self.inner = inner
        self.broken = False

    async def stream(self, sha256: str, start: int = 0, end: int | None = None):  # type: ignore[no-untyped-def]
        sent = 0
        async for chunk in self.inner.stream(sha256, start, end):
            if not self.broken and sent > 2 * MiB:
                self.broken = True
                raise ConnectionResetError("dropped (test)")
            sent += len(chunk)
            yield chunk


async def test_subscriber_follows_reference_resumes_and_verifies(env: Env, tmp_path: Path) -> None:
    from digipoort.pki.tls import client_ssl_context
    from routing.fetcher import ReferenceFetcher
    from routing.subscriber import subscribe

    port = free_port()
    env.settings.wus.public_url = f"https://localhost:{port}"
    gw = await env.start_gateway(components=("intake", "validator", "router"))
    assert gw.intake is not None and gw.store is not None
    flaky = FlakyStore(gw.store)
    runner = await download_server(gw, env.dir / "pki", port, flaky)  # type: ignore[arg-type]
    try:
        large = xml_of_size(6 * MiB)
        accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting", content=large))
        await env.wait_status(accepted.kenmerk, "400", recipient=BELASTINGDIENST)
        pki = env.dir / "pki"
        fetcher = ReferenceFetcher(
            client_ssl_context(
                pki / f"{BELASTINGDIENST}.crt", pki / f"{BELASTINGDIENST}.key", pki / "ca.crt"
            ),
            retry_delay=0.01,
        )
        handled = await subscribe(env.amqp_url, BELASTINGDIENST, tmp_path, count=1, fetcher=fetcher)
        assert handled == 1 and flaky.broken, "the first download broke off and was resumed"
        stored = tmp_path / str(accepted.kenmerk) / "bericht.xml"
        assert stored.read_bytes() == large
        meta = (tmp_path / str(accepted.kenmerk) / "afleverRequest.json").read_text()
        assert hashlib.sha256(large).hexdigest() in meta
        await env.wait_status(accepted.kenmerk, "402", recipient=BELASTINGDIENST)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("kenmerk", "seq", "expected"),
    [
        ("00000000-0000-0000-0000-000000000001", "0", 0),
        ("00000000-0000-0000-0000-000000000001", "32767", 32767),
        ("00000000-0000-0000-0000-000000000001", "32768", None),  # beyond smallint
        ("00000000-0000-0000-0000-000000000001", "99999999999", None),
        ("00000000-0000-0000-0000-000000000001", "٣", None),  # int() takes it
        ("00000000-0000-0000-0000-000000000001", "-1", None),
        ("00000000-0000-0000-0000-000000000001", " 1", None),
        ("not-a-kenmerk", "0", None),
    ],
)
def test_reference_paths_outside_the_table_name_nothing(
    kenmerk: str, seq: str, expected: int | None
) -> None:
    parsed = parse_reference_path(kenmerk, seq)
    assert (parsed[1] if parsed else None) == expected
