"""The dev PKI's revocation responder: CRLs over HTTP and an OCSP responder.

``digipoort dev pki-server`` runs it; tests run it in-process with :func:`start_responder`
(it is deliberately not a gateway component: every test gateway would then claim its
fixed port). It serves the files of a dev PKI directory
(:mod:`digipoort.pki.devpki`) as named in the certificates' CRL distribution points and
AIA, reading them on every request, so ``digipoort dev revoke`` takes effect at once:

* ``GET /crl/ca.crl``, ``GET /crl/root.crl`` — the CRL (DER, ``application/pkix-crl``).
* ``POST /ocsp/intermediate``, ``POST /ocsp/root`` — RFC 6960 over HTTP: the answer
  comes from that CA's CRL (listed: revoked; otherwise good), signed by the CA itself,
  valid for ``ocsp_validity`` seconds.

Development only: it answers "good" for any serial its CA's CRL does not list.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import structlog
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp

from digipoort.pki.trust import load_crls

__all__ = ["ocsp_response", "responder_app", "start_responder"]

log = structlog.get_logger(__name__)

_MAX_REQUEST = 16 * 1024
_CAS = {"intermediate": ("intermediate", "ca.crl"), "root": ("ca", "root.crl")}
_CRLS = {"ca.crl", "root.crl"}


def _issuer(pki_dir: Path, name: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey, Path]:
    stem, crl = _CAS[name]
    cert = x509.load_pem_x509_certificates((pki_dir / f"{stem}.crt").read_bytes())[0]
    key = serialization.load_pem_private_key((pki_dir / f"{stem}.key").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return cert, key, pki_dir / crl


def ocsp_response(pki_dir: Path, ca: str, request_der: bytes, validity: timedelta) -> bytes:
    """The DER OCSP response of CA ``ca`` ("intermediate" or "root") to a request."""
    try:
        request = ocsp.load_der_ocsp_request(request_der)
    except ValueError:
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        ).public_bytes(serialization.Encoding.DER)
    issuer, key, crl_path = _issuer(pki_dir, ca)
    algorithm = request.hash_algorithm
    digest = hashes.Hash(algorithm)
    digest.update(
        issuer.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.PKCS1
        )
    )
    if request.issuer_key_hash != digest.finalize():
        return ocsp.OCSPResponseBuilder.build_unsuccessful(
            ocsp.OCSPResponseStatus.UNAUTHORIZED
        ).public_bytes(serialization.Encoding.DER)
    entry = None
    for crl in load_crls(crl_path):
        entry = entry or crl.get_revoked_certificate_by_serial_number(request.serial_number)
    now = datetime.now(UTC).replace(microsecond=0)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=request.issuer_name_hash,
        issuer_key_hash=request.issuer_key_hash,
        serial_number=request.serial_number,
        algorithm=algorithm,
        cert_status=ocsp.OCSPCertStatus.REVOKED if entry else ocsp.OCSPCertStatus.GOOD,
        this_update=now - timedelta(seconds=1),
        next_update=now + validity,
        revocation_time=entry.revocation_date_utc if entry else None,
        revocation_reason=x509.ReasonFlags.key_compromise if entry else None,
    )
    builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def responder_app(pki_dir: Path, *, ocsp_validity: float = 300.0) -> web.Application:
    validity = timedelta(seconds=ocsp_validity)

    async def crl(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _CRLS or not (pki_dir / name).exists():
            raise web.HTTPNotFound()
        crls = await asyncio.to_thread(load_crls, pki_dir / name)
        return web.Response(
            body=crls[0].public_bytes(serialization.Encoding.DER),
            content_type="application/pkix-crl",
        )

    async def answer(request: web.Request) -> web.Response:
        ca = request.match_info["ca"]
        if ca not in _CAS:
            raise web.HTTPNotFound()
        if (request.content_length or 0) > _MAX_REQUEST:
            raise web.HTTPRequestEntityTooLarge(_MAX_REQUEST, request.content_length or 0)
        body = await request.content.read(_MAX_REQUEST + 1)
        if len(body) > _MAX_REQUEST:
            raise web.HTTPRequestEntityTooLarge(_MAX_REQUEST, len(body))
        der = await asyncio.to_thread(ocsp_response, pki_dir, ca, body, validity)
        return web.Response(body=der, content_type="application/ocsp-response")

    app = web.Application(client_max_size=_MAX_REQUEST)
    app.router.add_get("/crl/{name}", crl)
    app.router.add_post("/ocsp/{ca}", answer)
    return app


async def start_responder(
    pki_dir: Path, host: str, port: int, *, ocsp_validity: float = 300.0
) -> web.AppRunner:
    """Serve pki_dir on host:port; ``await runner.cleanup()`` stops it."""
    runner = web.AppRunner(responder_app(pki_dir, ocsp_validity=ocsp_validity), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("pki.responder_listening", host=host, port=port, pki_dir=str(pki_dir))
    return runner
