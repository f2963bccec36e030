"""A WUS client: signs and submits like a real Digipoort client (used by the CLI, the
tests and the benchmark).

Requests: SOAP 1.1, WS-Addressing (To, MessageID, Action), WS-Security (Timestamp, BST,
one signature over Timestamp, every wsa header and Body) over mutual TLS. Responses are
verified: the signature (``verify_envelope``), RelatesTo == our MessageID, and the signing
certificate must be the very certificate the TLS server presented.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from lxml import etree

from adapters.wus.wsdl import AANLEVER_PATH, STATUS_PATH
from digipoort.clienterrors import ClientError, diagnose
from digipoort.pki import client_ssl_context
from digipoort.wus.soap import (
    AANLEVERSERVICE_NS,
    KOPPELVLAK_NS,
    SOAP11_NS,
    STATUSINFORMATIESERVICE_NS,
    SoapError,
    build_envelope,
    new_message_id,
    parse_envelope,
)
from digipoort.wus.wsprofile import WSSecurityError
from digipoort.wus.wssign import sign_envelope
from digipoort.wus.wsverify import verify_envelope

__all__ = ["CLI", "Bijlage", "WusClient", "WusError", "WusFault"]

KV = f"{{{KOPPELVLAK_NS}}}"
#: Requests are sent in chunks of this size when someone watches the progress.
SEND_CHUNK = 256 * 1024


class WusError(ClientError):
    """The exchange failed (transport, or an answer that does not verify)."""


class WusFault(WusError):
    """A Digipoort fault: ``str()`` is ``"<foutcode>: <foutbeschrijving>"``, once."""

    def __init__(self, foutcode: str, foutbeschrijving: str, http_status: int) -> None:
        super().__init__(f"{foutcode}: {foutbeschrijving.strip()}")
        self.foutcode = foutcode
        self.foutbeschrijving = foutbeschrijving
        self.http_status = http_status


@dataclass(frozen=True)
class Bijlage:
    mime_type: str
    bestandsnaam: str
    content: bytes


def _sub(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, KV + name)
    if text is not None:
        element.text = text
    return element


def _identiteit(parent: etree._Element, name: str, nummer: str, soort: str) -> None:
    element = _sub(parent, name)
    _sub(element, "nummer", nummer)
    _sub(element, "type", soort)


def _document(parent: etree._Element, name: str, doc: Bijlage) -> None:
    element = _sub(parent, name)
    _sub(element, "mimeType", doc.mime_type)
    _sub(element, "bestandsnaam", doc.bestandsnaam)
    _sub(element, "inhoud", base64.b64encode(doc.content).decode("ascii"))


def aanlever_request(
    *,
    berichtsoort: str,
    belanghebbende: tuple[str, str],
    inhoud: Bijlage,
    rol_belanghebbende: str = "Bedrijf",
    aanleverkenmerk: str | None = None,
    ontvanger: tuple[str, str] | None = None,
    bijlagen: Sequence[Bijlage] = (),
    autorisatie_adres: str | None = None,
) -> etree._Element:
    root = etree.Element(KV + "aanleverRequest", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    _sub(root, "berichtsoort", berichtsoort)
    if aanleverkenmerk is not None:
        _sub(root, "aanleverkenmerk", aanleverkenmerk)
    _identiteit(root, "identiteitBelanghebbende", *belanghebbende)
    _sub(root, "rolBelanghebbende", rol_belanghebbende)
    if ontvanger is not None:
        _identiteit(root, "identiteitOntvanger", *ontvanger)
    _document(root, "berichtInhoud", inhoud)
    if bijlagen:
        container = _sub(root, "berichtBijlagen")
        for b in bijlagen:
            _document(container, "bijlage", b)
    if autorisatie_adres is not None:
        _sub(root, "autorisatieAdres", autorisatie_adres)
    return root


def status_request(operation: str, **fields: Any) -> etree._Element:
    root = etree.Element(KV + f"{operation}Request", nsmap={None: KOPPELVLAK_NS})  # type: ignore[dict-item]
    for name in (
        "kenmerk",
        "berichtsoort",
        "identiteitBelanghebbende",
        "autorisatieAdres",
        "tijdstempelVanaf",
        "tijdstempelTot",
    ):
        value = fields.get(name)
        if value is None:
            continue
        if name == "identiteitBelanghebbende":
            _identiteit(root, name, *value)
        else:
            _sub(root, name, value)
    return root


def _text(element: etree._Element, name: str) -> str | None:
    return element.findtext(KV + name)


def status_dicts(payload: etree._Element) -> list[dict[str, Any]]:
    """Every StatusResultaat under ``payload`` (a WUS answer or an FTP status file)."""
    result: list[dict[str, Any]] = []
    for item in payload.iter(KV + "StatusResultaat"):
        fout = item.find(KV + "statusFoutcode")
        result.append(
            {
                "kenmerk": _text(item, "kenmerk"),
                "statuscode": _text(item, "statuscode"),
                "tijdstempel": _text(item, "tijdstempelStatus"),
                "omschrijving": _text(item, "statusomschrijving"),
                "foutcode": fout.findtext(KV + "foutcode") if fout is not None else None,
                "foutbeschrijving": (
                    fout.findtext(KV + "foutbeschrijving") if fout is not None else None
                ),
                "details": _text(item, "statusdetails"),
            }
        )
    return result


class WusClient:
    """One participant (certificate + key) talking to one gateway (base URL)."""

    def __init__(
        self,
        base_url: str,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        *,
        algorithm: Literal["sha256", "sha1"] = "sha256",
        timeout: float = 300.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.algorithm: Literal["sha256", "sha1"] = algorithm
        self.cert_file, self.ca_file = cert_file, ca_file
        #: Called with the number of request bytes sent (a progress bar), if set.
        self.progress: Callable[[int], None] | None = None
        self.ssl = client_ssl_context(cert_file, key_file, ca_file)
        self.certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        key = load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("an RSA key is required")
        self.key = key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> WusClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=0), timeout=self._timeout
            )
        return self._session

    # -------------------------------------------------------------- building

    def sign(
        self,
        path: str,
        action: str,
        payload: etree._Element,
        *,
        message_id: str | None = None,
        ttl: timedelta = timedelta(minutes=5),
    ) -> tuple[str, bytes]:
        """(message_id, signed request bytes) for an endpoint path and action."""
        message_id = message_id or new_message_id()
        envelope = build_envelope(
            payload, action=action, to=self.base_url + path, message_id=message_id
        )
        return message_id, sign_envelope(
            envelope, self.key, self.certificate, algorithm=self.algorithm, timestamp_ttl=ttl
        )

    # -------------------------------------------------------------- exchanging

    async def post_raw(
        self, path: str, action: str, body: bytes, *, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes, bytes | None]:
        """POST bytes; (HTTP status, response body, DER of the TLS server certificate)."""
        all_headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{action}"'}
        all_headers.update(headers or {})
        data: bytes | AsyncIterator[bytes] = body
        if self.progress is not None:
            all_headers["Content-Length"] = str(len(body))
            data = self._chunks(body, self.progress)
        try:
            async with self._http().post(
                self.base_url + path, data=data, headers=all_headers
            ) as response:
                server_der: bytes | None = None
                if response.connection is not None and response.connection.transport is not None:
                    ssl_object = response.connection.transport.get_extra_info("ssl_object")
                    if isinstance(ssl_object, ssl.SSLObject):
                        server_der = ssl_object.getpeercert(binary_form=True)
                return response.status, await response.read(), server_der
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            refused = diagnose(exc, self.cert_file, self.ca_file)
            if refused is not None:
                raise refused from exc
            raise WusError(f"cannot reach the gateway at {self.base_url}: {exc}") from exc

    @staticmethod
    async def _chunks(body: bytes, progress: Callable[[int], None]) -> AsyncIterator[bytes]:
        view = memoryview(body)
        for start in range(0, len(body), SEND_CHUNK):
            chunk = bytes(view[start : start + SEND_CHUNK])
            yield chunk
            progress(len(chunk))

    def check_response(
        self, status: int, body: bytes, server_der: bytes | None, message_id: str
    ) -> etree._Element:
        """The verified response payload, or raise WusFault / WusError."""
        if status != 200:
            root = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
            fault = root.find(f"{{{SOAP11_NS}}}Body/{{{SOAP11_NS}}}Fault/detail")
            if fault is None or len(fault) == 0:
                raise WusError(f"HTTP {status} without a Digipoort fault")
            detail = fault[0]
            raise WusFault(
                detail.findtext(KV + "foutcode") or "",
                detail.findtext(KV + "foutbeschrijving") or "",
                status,
            )
        try:
            parsed = parse_envelope(body, allow_huge_text=True)
            security = verify_envelope(parsed)
        except (SoapError, WSSecurityError) as exc:
            raise WusError(f"response does not verify: {exc}") from exc
        if parsed.relates_to != message_id:
            raise WusError("response RelatesTo does not match the request MessageID")
        if server_der is not None and security.certificate.public_bytes(Encoding.DER) != server_der:
            raise WusError("response signed by another certificate than the TLS server's")
        return parsed.payload

    async def call(self, path: str, action: str, payload: etree._Element) -> etree._Element:
        message_id, body = self.sign(path, action, payload)
        status, response, server_der = await self.post_raw(path, action, body)
        return self.check_response(status, response, server_der, message_id)

    # -------------------------------------------------------------- operations

    async def aanleveren(self, request: etree._Element) -> dict[str, Any]:
        action = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"
        payload = await self.call(AANLEVER_PATH, action, request)
        return {
            "kenmerk": _text(payload, "kenmerk"),
            "berichtsoort": _text(payload, "berichtsoort"),
            "aanleverkenmerk": _text(payload, "aanleverkenmerk"),
            "tijdstempelAangeleverd": _text(payload, "tijdstempelAangeleverd"),
        }

    async def status(self, operation: str, **fields: Any) -> list[dict[str, Any]]:
        action = STATUSINFORMATIESERVICE_NS + f"StatusinformatieService/{operation}Request"
        payload = await self.call(STATUS_PATH, action, status_request(operation, **fields))
        return status_dicts(payload)

    async def berichtsoorten(self, belanghebbende: tuple[str, str]) -> list[str]:
        action = STATUSINFORMATIESERVICE_NS + "StatusinformatieService/getBerichtsoortenRequest"
        payload = await self.call(
            STATUS_PATH,
            action,
            status_request("getBerichtsoorten", identiteitBelanghebbende=belanghebbende),
        )
        return [e.text or "" for e in payload.iter(KV + "berichtsoort")]


def _oin_of(cert_file: Path) -> str:
    from digipoort.pki import certificate_file_oin

    try:
        return certificate_file_oin(cert_file)
    except ValueError as exc:
        raise WusError(str(exc)) from None


class _Cli:
    """What ``digipoort submit/status --via wus`` call (entry point ``digipoort.submitters``)."""

    def submit(
        self,
        *,
        url: str,
        cert: Path,
        key: Path,
        ca: Path,
        berichtsoort: str,
        file: Path,
        ontvanger: str | None,
        bijlagen: Sequence[Path],
        aanleverkenmerk: str | None,
        mime_type: str,
    ) -> dict[str, Any]:
        oin = _oin_of(cert)
        request = aanlever_request(
            berichtsoort=berichtsoort,
            belanghebbende=(oin, "OIN"),
            inhoud=Bijlage(mime_type, file.name[:80], file.read_bytes()),
            aanleverkenmerk=aanleverkenmerk,
            ontvanger=(ontvanger, "OIN") if ontvanger else None,
            bijlagen=[
                Bijlage("application/octet-stream", b.name[:80], b.read_bytes()) for b in bijlagen
            ],
        )

        from digipoort.clikit import progress_bar

        size = file.stat().st_size + sum(b.stat().st_size for b in bijlagen)

        async def go() -> dict[str, Any]:
            async with WusClient(url, cert, key, ca) as client:
                with progress_bar(file.name, size * 4 // 3) as advance:
                    client.progress = advance
                    return await client.aanleveren(request)

        return asyncio.run(go())

    def status(
        self, *, url: str, cert: Path, key: Path, ca: Path, kenmerk: str
    ) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            async with WusClient(url, cert, key, ca) as client:
                return await client.status("getStatussenProces", kenmerk=kenmerk)

        return asyncio.run(go())


CLI = _Cli()
