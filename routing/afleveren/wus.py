"""The ``wus`` channel: the gateway's AfleverService client pushes one afleverRequest to
a recipient.

SOAP 1.1 + WS-Addressing (To = the recipient's URL, a fresh MessageID, Action
``…/afleverservice/1.2/AfleverService/afleverenRequest``), WS-Security signed with the
gateway certificate (``pki.cert_file``/``key_file``), over mutual TLS (the same
certificate as client certificate; the recipient's server certificate verified against
``pki.ca_file`` and its host name, and checked for revocation — in the handshake
against the revocation service's CRLs, and after it by :class:`~digipoort.pki.wiring.PeerCheck`,
which also sees OCSP). Success is only a valid afleverResponse: HTTP 200,
signature valid, RelatesTo = our MessageID, the signing certificate trusted (chain, CRL)
and carrying **that recipient's OIN**, and the response's kenmerk = ours. Everything else
raises :class:`routing.afleveren.channel.DeliveryFailed` with a short reason (retried, 420);
the receipt (the signed afleverResponse) is archived before it counts.

SOAP envelopes and WS-Security come from ``digipoort/wus/soap.py``, ``wsprofile.py``,
``wssign.py`` and ``wsverify.py`` for now: shared protocol code of ingress and egress that
belongs in the ground layer (``digipoort/``); see ``tests/test_layering.py``.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from pathlib import Path
from typing import Final
from uuid import UUID

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from lxml import etree

from digipoort.archive import Recorder, disabled
from digipoort.config import redact_url
from digipoort.pki import CertificateRejected, CertificateVerifier, client_ssl_context
from digipoort.pki.wiring import PeerCheck, PeerRejected
from digipoort.registry import Participant
from digipoort.wus.soap import (
    AFLEVERSERVICE_NS,
    KOPPELVLAK_NS,
    SOAP11_NS,
    SoapError,
    build_envelope,
    new_message_id,
    parse_envelope,
)
from digipoort.wus.wsprofile import WSSecurityError
from digipoort.wus.wssign import sign_envelope
from digipoort.wus.wsverify import verify_envelope
from routing.afleveren.channel import DeliveryFailed, Outgoing, Receipt, archive_receipt

__all__ = ["AFLEVER_ACTION", "AfleverClient"]

AFLEVER_ACTION: Final = AFLEVERSERVICE_NS + "AfleverService/afleverenRequest"
AFLEVER_RESPONSE_ACTION: Final = AFLEVERSERVICE_NS + "AfleverService/afleverenResponse"
KV: Final = f"{{{KOPPELVLAK_NS}}}"
#: An afleverResponse is small; a recipient answering more is not trusted with memory.
MAX_RESPONSE: Final = 1024 * 1024


def _payload(body: bytes) -> etree._Element:
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True
    )
    return etree.fromstring(body, parser)


class AfleverClient:
    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        ca_file: Path,
        verifier: CertificateVerifier,
        *,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        peer_check: PeerCheck | None = None,
        archive: Recorder | None = None,
    ) -> None:
        self._ssl = ssl_context or client_ssl_context(cert_file, key_file, ca_file)
        self._peer_check = peer_check
        self._archive = archive or disabled()  # docs/archive.md: receipts are archived
        self._certificate = x509.load_pem_x509_certificates(cert_file.read_bytes())[0]
        key = load_pem_private_key(key_file.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{key_file}: the gateway signing key must be RSA")
        self._key = key
        self._verifier = verifier
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = (
                self._peer_check.connector(self._ssl, limit=32)
                if self._peer_check is not None
                else aiohttp.TCPConnector(ssl=self._ssl, limit=32)
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
            )
        return self._session

    async def deliver(self, out: Outgoing) -> Receipt:
        """The :class:`~routing.afleveren.channel.Channel` method: the afleverRequest."""
        return await self.push(out.participant, out.kenmerk, out.aflever_request())

    async def push(self, participant: Participant, kenmerk: UUID, body: bytes) -> Receipt:
        """One afleverRequest to a participant's registered AfleverService."""
        url = participant.aflever.url
        if not url:
            raise DeliveryFailed("geen URL van de afleverservice geregistreerd")
        return await self.afleveren(url, participant.oin, kenmerk, body)

    def sign(self, url: str, body: bytes) -> tuple[str, bytes]:
        message_id = new_message_id()
        envelope = build_envelope(
            _payload(body), action=AFLEVER_ACTION, to=url, message_id=message_id
        )
        return message_id, sign_envelope(envelope, self._key, self._certificate)

    async def afleveren(
        self, url: str, recipient_oin: str, kenmerk: UUID, body: bytes
    ) -> Receipt:
        message_id, request = await asyncio.to_thread(self.sign, url, body)
        headers = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": f'"{AFLEVER_ACTION}"'}
        try:
            async with self._http().post(url, data=request, headers=headers) as response:
                if (response.content_length or 0) > MAX_RESPONSE:
                    raise DeliveryFailed(f"antwoord te groot (HTTP {response.status})")
                answer = await response.content.read(MAX_RESPONSE + 1)
                status = response.status
        except DeliveryFailed:
            raise
        except PeerRejected as exc:
            reason = f"servercertificaat van de ontvanger afgewezen ({exc.reason})"
            raise DeliveryFailed(reason) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise DeliveryFailed(
                f"verbinding met {redact_url(url)} mislukt: {type(exc).__name__}"
            ) from None
        if len(answer) > MAX_RESPONSE:
            raise DeliveryFailed("antwoord te groot")
        self.check_response(status, answer, message_id, recipient_oin, kenmerk)
        # the receipt is signed by the recipient (its certificate in the receipt's
        # BinarySecurityToken); aiohttp has released the connection by now: no TLS facts
        archived = self._archive.exchange("wus")
        sent = {"url": redact_url(url), "request_sha256": hashlib.sha256(request).hexdigest()}
        # delivered only once the receipt is archived (docs/archive.md)
        return await archive_receipt(
            archived,
            Receipt("aflever.wus.receipt", answer, sent),
            oin=recipient_oin,
            kenmerk=kenmerk,
            unavailable="afleverResponse niet gearchiveerd: archief niet beschikbaar",
        )

    def check_response(
        self, status: int, answer: bytes, message_id: str, recipient_oin: str, kenmerk: UUID
    ) -> None:
        try:
            parsed = parse_envelope(answer)
        except SoapError as exc:
            raise DeliveryFailed(f"HTTP {status}, geen geldig SOAP-antwoord ({exc.code})") from None
        if status != 200 or parsed.payload.tag == f"{{{SOAP11_NS}}}Fault":
            raise DeliveryFailed(f"afleverFault: {_fault_text(parsed.payload, status)}")
        try:
            security = verify_envelope(parsed)
        except WSSecurityError as exc:
            raise DeliveryFailed(f"ondertekening van het antwoord ongeldig ({exc.code})") from None
        try:
            signer = self._verifier.verify(security.certificate)
        except CertificateRejected as exc:
            raise DeliveryFailed(f"ondertekenaar niet vertrouwd ({exc.reason})") from None
        if signer.oin != recipient_oin:
            raise DeliveryFailed("antwoord ondertekend door een andere partij dan de ontvanger")
        if parsed.relates_to != message_id:
            raise DeliveryFailed("RelatesTo van het antwoord klopt niet")
        if parsed.payload.tag != KV + "afleverResponse":
            raise DeliveryFailed("antwoord is geen afleverResponse")
        if (parsed.payload.findtext(KV + "kenmerk") or "").strip() != str(kenmerk):
            raise DeliveryFailed("afleverResponse noemt een ander kenmerk")


def _fault_text(payload: etree._Element, status: int) -> str:
    detail = payload.find("detail")
    if detail is not None and len(detail):
        code = detail[0].findtext(KV + "foutcode") or ""
        text = (detail[0].findtext(KV + "foutbeschrijving") or "").strip()
        return f"{code} {text[:200]}".strip()
    return f"HTTP {status} {(payload.findtext('faultstring') or '')[:200]}".strip()
