"""A small reference WUS AfleverService: ``digipoort aflever-server``.

For recipients that want pushes without writing a SOAP stack, and for the tests. Mutual
TLS (client certificate chained to ``--ca``); the request must be a SOAP 1.1 afleverRequest
with WS-Addressing, WS-Security signed by a certificate that chains to ``--ca`` (no
gateway settings needed: trust is the CA) and carries the same OIN as the TLS client
certificate. Each document is written atomically under ``OUT/<kenmerk>/`` (a temporary
directory renamed into place): ``afleverRequest.xml`` plus the decoded documents. A
kenmerk seen before is answered OK without writing again (the gateway may retry after a
lost answer). The answer is a signed afleverResponse; refusals are unsigned afleverFaults.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import click
import structlog
from aiohttp import web
from cryptography import x509
from lxml import etree

from adapters.wus.component import load_signing_identity
from adapters.wus.messages import aflever_response
from digipoort.clikit import stop_on_signals
from digipoort.httpguard import GuardedSite, HttpGuard, HttpGuardConfig
from digipoort.payloads import fsync_dir
from digipoort.pki import (
    CertificateRejected,
    CertificateVerifier,
    oin_from_certificate,
    peer_certificate,
    server_ssl_context,
)
from digipoort.wus.soap import (
    AFLEVERSERVICE_NS,
    KOPPELVLAK_NS,
    WSA_ANONYMOUS,
    ParsedEnvelope,
    SoapError,
    build_envelope,
    build_fault,
    parse_envelope,
)
from digipoort.wus.wsprofile import WSSecurityError
from digipoort.wus.wssign import sign_envelope
from digipoort.wus.wsverify import verify_envelope
from routing.afleveren.wus import AFLEVER_ACTION, AFLEVER_RESPONSE_ACTION

log = structlog.get_logger(__name__)

KV: Final = f"{{{KOPPELVLAK_NS}}}"
MAX_REQUEST: Final = 64 * 1024 * 1024
READ_TIMEOUT: Final = 120.0
FAULT_ACTION: Final = AFLEVERSERVICE_NS + "AfleverService/afleveren/Fault/"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class Refused(Exception):
    def __init__(self, foutcode: str, text: str) -> None:
        super().__init__(f"{foutcode}: {text}")
        self.foutcode = foutcode
        self.text = text


@dataclass
class AfleverServer:
    cert_file: Path
    key_file: Path
    ca_file: Path
    out_dir: Path
    intermediates_file: Path | None = None
    received: list[str] = field(default_factory=list)  # kenmerken, in arrival order
    guard: HttpGuardConfig = field(default_factory=HttpGuardConfig)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self._key, self._cert = load_signing_identity(self.cert_file, self.key_file)
        self._verifier = CertificateVerifier.from_files(
            self.ca_file, intermediates_file=self.intermediates_file
        )
        self.out_dir.mkdir(parents=True, exist_ok=True)

    async def start(self, host: str, port: int) -> None:
        app = web.Application(client_max_size=MAX_REQUEST)
        app.router.add_post("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        ssl_context = server_ssl_context(self.cert_file, self.key_file, self.ca_file)
        site = GuardedSite(
            self._runner,
            host,
            port,
            guard=HttpGuard("aflever", self.guard),
            ssl_context=ssl_context,
        )
        await site.start()
        log.info("aflever-server listening", host=host, port=port, out=str(self.out_dir))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.Response:
        message_id: str | None = None
        try:
            tls_oin, tls_cert = self._tls_oin(request)
            if request.headers.get("SOAPAction", "").strip().strip('"') != AFLEVER_ACTION:
                raise Refused("AFS100", "SOAPAction is geen afleveren")
            body = await _read_body(request)
            parsed = await asyncio.to_thread(self._verify, body, tls_oin, tls_cert)
            message_id = parsed.message_id
            kenmerk, berichtsoort, berichtkenmerk = await asyncio.to_thread(
                self._store, parsed.payload
            )
        except Refused as exc:
            log.info("aflever-server: refused", foutcode=exc.foutcode, reason=exc.text)
            fault = build_fault(
                "soapenv:Client",
                "Algemene fout",
                "afleverFault",
                exc.foutcode,
                exc.text,
                action=FAULT_ACTION,
                relates_to=message_id,
            )
            return web.Response(status=500, body=fault, content_type="text/xml")
        answer = build_envelope(
            aflever_response(kenmerk, berichtsoort, berichtkenmerk, datetime.now(UTC)),
            action=AFLEVER_RESPONSE_ACTION,
            to=WSA_ANONYMOUS,
            relates_to=message_id,
        )
        signed = sign_envelope(answer, self._key, self._cert)
        return web.Response(body=signed, content_type="text/xml", charset="utf-8")

    def _tls_oin(self, request: web.Request) -> tuple[str, x509.Certificate]:
        """The client's OIN: the TLS handshake already verified its chain to the CA."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        if cert is None:
            raise Refused("AFS110", "clientcertificaat ontbreekt")
        oin = oin_from_certificate(cert)
        if oin is None:
            raise Refused("AFS110", "clientcertificaat zonder OIN")
        return oin, cert

    def _verify(self, body: bytes, tls_oin: str, tls_cert: x509.Certificate) -> ParsedEnvelope:
        try:
            parsed = parse_envelope(body, allow_huge_text=True)
            security = verify_envelope(parsed)
        except (SoapError, WSSecurityError) as exc:
            raise Refused("AFS120", f"bericht of ondertekening ongeldig ({exc.code})") from None
        if parsed.action != AFLEVER_ACTION or parsed.payload.tag != KV + "afleverRequest":
            raise Refused("AFS100", "geen afleverRequest")
        if security.certificate == tls_cert:  # chain verified in the handshake
            signer_oin = tls_oin
        else:
            try:
                signer_oin = self._verifier.verify(security.certificate).oin
            except CertificateRejected as exc:
                raise Refused("AFS110", f"ondertekenaar niet vertrouwd ({exc.reason})") from None
        if signer_oin != tls_oin:
            raise Refused("AFS110", "ondertekenaar verschilt van de TLS-partij")
        return parsed

    def _store(self, payload: etree._Element) -> tuple[str, str | None, str]:
        raw = (payload.findtext(KV + "kenmerk") or "").strip()
        try:
            kenmerk = str(uuid.UUID(raw))
        except ValueError:
            raise Refused("AFS100", "kenmerk ontbreekt of is ongeldig") from None
        berichtsoort = payload.findtext(KV + "berichtsoort")
        berichtkenmerk = (payload.findtext(KV + "berichtkenmerk") or kenmerk).strip()
        target = self.out_dir / kenmerk
        if target.exists():
            log.info("aflever-server: duplicate kenmerk, not written again", kenmerk=kenmerk)
            self.received.append(kenmerk)
            return kenmerk, berichtsoort, berichtkenmerk
        documents = _documents(payload)
        tmp = self.out_dir / f".incoming-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            _write(tmp / "afleverRequest.xml", etree.tostring(payload, xml_declaration=True))
            for i, (name, content) in enumerate(documents):
                _write(tmp / f"{i}-{name}", content)
            os.rename(tmp, target)  # atomic; fails if a concurrent request won
            fsync_dir(self.out_dir)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not target.exists():
                raise
        self.received.append(kenmerk)
        log.info("aflever-server: stored", kenmerk=kenmerk, documents=len(documents))
        return kenmerk, berichtsoort, berichtkenmerk


async def _read_body(request: web.Request) -> bytes:
    """The body, within MAX_REQUEST bytes and READ_TIMEOUT seconds (413 / 408 otherwise;
    the HTTP guard logs and counts both)."""
    if (request.content_length or 0) > MAX_REQUEST:
        raise web.HTTPRequestEntityTooLarge(MAX_REQUEST, request.content_length or 0)
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            return await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None


def _documents(payload: etree._Element) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    elements = [payload.find(KV + "berichtInhoud")]
    elements += payload.findall(f"{KV}berichtBijlagen/{KV}bijlage")
    for el in elements:
        if el is None:
            raise Refused("AFS100", "berichtInhoud ontbreekt")
        name = _UNSAFE.sub("_", (el.findtext(KV + "bestandsnaam") or "document").strip())
        try:
            content = base64.b64decode(el.findtext(KV + "inhoud") or "", validate=False)
        except (binascii.Error, ValueError):
            raise Refused("AFS100", "inhoud is geen base64") from None
        found.append((name.lstrip(".")[:80] or "document", content))
    return found


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())




_FILE = click.Path(path_type=Path, dir_okay=False, exists=True)


@click.command("aflever-server")
@click.option("--cert", type=_FILE, required=True, help="Server and signing certificate (PEM).")
@click.option("--key", type=_FILE, required=True, help="Its private key (PEM).")
@click.option("--ca", type=_FILE, required=True, help="Trusted CA(s) for clients and signers.")
@click.option(
    "--intermediates",
    type=_FILE,
    default=None,
    help="Intermediate CA certificates (PEM), for signers that differ from the TLS client.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=9443, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), required=True)
def aflever_server(
    cert: Path, key: Path, ca: Path, intermediates: Path | None, host: str, port: int, out: Path
) -> None:
    """Run a reference WUS AfleverService that writes received documents to OUT/<kenmerk>/."""
    from digipoort import logging as dlogging

    dlogging.configure("info")
    server = AfleverServer(cert, key, ca, out, intermediates)

    async def run() -> None:
        stop = stop_on_signals()
        await server.start(host, port)
        click.echo(f"AfleverService on https://{host}:{port}/ writing to {out}")
        await stop.wait()
        await server.stop()

    asyncio.run(run())
