"""Verifiers and server TLS contexts built from ``settings.pki``, all sharing the
process's one :class:`~digipoort.pki.revocation.RevocationService`.

Components call :func:`participant_verifier` and :func:`server_context` instead of
building their own, then ``await revocation_service(settings).start()`` (and ``stop()``
when they stop): the service refreshes CRLs and OCSP answers in the background and
writes new CRLs into every context made here.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from digipoort.config import Settings
from digipoort.pki.revocation import RevocationService
from digipoort.pki.tls import (
    client_ssl_context,
    label_context,
    peer_certificate,
    server_ssl_context,
)
from digipoort.pki.trust import CertificateRejected, CertificateVerifier

__all__ = [
    "PeerCheck",
    "PeerRejected",
    "client_context",
    "participant_verifier",
    "revocation_service",
    "server_context",
]

_SERVICES: dict[tuple[object, ...], RevocationService] = {}


def _paths(s: Settings) -> tuple[Path, list[Path], Path | None]:
    pki = s.pki
    inter = s.resolve(pki.intermediates_file) if pki.intermediates_file else None
    return s.resolve(pki.ca_file), [s.resolve(p) for p in pki.crl_files], inter


def _seeds(s: Settings, inter: Path | None) -> list[x509.Certificate]:
    """Certificates whose CRL distribution points are fetched at start: the configured
    intermediates and the gateway's own certificate (issued by a participant's CA)."""
    return _certificates(inter, s.resolve(s.pki.cert_file))


def _certificates(*paths: Path | None) -> list[x509.Certificate]:
    found: list[x509.Certificate] = []
    for path in paths:
        if path is not None and path.exists():
            found += x509.load_pem_x509_certificates(path.read_bytes())
    return found


def revocation_service(s: Settings) -> RevocationService:
    """The one revocation service of this process for these PKI settings."""
    ca, crls, inter = _paths(s)
    rev = s.pki.revocation
    key = (ca, tuple(crls), inter, rev.fetch, rev.refresh_seconds, rev.timeout_seconds)
    service = _SERVICES.get(key)
    if service is None:
        service = RevocationService(
            crl_files=crls,
            fetch=rev.fetch,
            refresh_seconds=rev.refresh_seconds,
            timeout_seconds=rev.timeout_seconds,
            max_bytes=rev.max_bytes,
            seeds=_seeds(s, inter),
            issuers=_certificates(ca, inter),
        )
        _SERVICES[key] = service
    return service


def participant_verifier(
    s: Settings,
    *,
    required_eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
    port: str | None = None,
) -> CertificateVerifier:
    """Verifies participants' certificates (chain, revocation, OIN) per ``settings.pki``."""
    ca, _, inter = _paths(s)
    return CertificateVerifier.from_files(
        ca,
        (),
        inter,
        require_crl=s.pki.require_crl,
        required_eku=required_eku,
        revocation=revocation_service(s),
        unknown_status=s.pki.revocation.unknown_status,
        port=port,
    )


def server_context(s: Settings, port: str, *, require_client_cert: bool = True) -> ssl.SSLContext:
    """The server context of one port (label ``port`` in logs and metrics).

    It checks the leaf against the revocation service's CRLs in the handshake when the
    client certificate is required; otherwise (SMTP, POP3, FTPS) the application's
    verifier decides, so that a revoked certificate gets the protocol's own reply.
    """
    ca, _, inter = _paths(s)
    context = server_ssl_context(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        ca,
        require_client_cert=require_client_cert,
        intermediates_file=inter,
    )
    label_context(context, port)
    if require_client_cert and _crl_in_handshake(s):
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    revocation_service(s).register_context(context)
    return context


def client_context(s: Settings) -> ssl.SSLContext:
    """The gateway's outbound mutual-TLS context (deliverer, relay, Grote Berichten
    fetcher): the server's chain and host name verified against ``pki.ca_file``, and its
    certificate checked against the revocation service's CRLs in the handshake."""
    context = client_ssl_context(
        s.resolve(s.pki.cert_file), s.resolve(s.pki.key_file), s.resolve(s.pki.ca_file)
    )
    inter = _paths(s)[2]
    if inter is not None and inter.exists():
        context.load_verify_locations(cafile=str(inter))
    if _crl_in_handshake(s):
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    revocation_service(s).register_context(context)
    return context


def _crl_in_handshake(s: Settings) -> bool:
    """OpenSSL refuses a leaf without a current CRL of its issuer: only when that is the
    configured behaviour (require_crl, fail closed)."""
    return s.pki.require_crl and s.pki.revocation.unknown_status == "fail_closed"


class PeerCheck:
    """Checks a TLS peer's certificate (a recipient's server) with the revocation
    service after the handshake — this also sees OCSP answers, which OpenSSL does not.
    Servers need not carry an OIN: only chain, validity and revocation count."""

    def __init__(self, s: Settings) -> None:
        self._verifier = participant_verifier(s, required_eku=None, port="outbound")

    async def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> None:
        """Raise CertificateRejected if the peer's certificate is not acceptable."""
        cert = peer_certificate(ssl_object) if ssl_object is not None else None
        if cert is None:
            raise CertificateRejected("untrusted", "no server certificate")
        try:
            await self._verifier.verify_async(cert)
        except CertificateRejected as rejected:
            if rejected.reason != "no_oin":
                raise

    def connector(self, context: ssl.SSLContext, **kwargs: Any) -> aiohttp.TCPConnector:
        """An aiohttp connector that runs this check on every new TLS connection, before
        a request is sent on it (a refusal raises :class:`PeerRejected`)."""
        return _CheckingConnector(self, ssl=context, **kwargs)


class PeerRejected(aiohttp.ClientConnectionError):
    """The server's certificate was refused by :class:`PeerCheck`; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"server certificate refused: {reason}")
        self.reason = reason


class _CheckingConnector(aiohttp.TCPConnector):
    # aiohttp has no public hook between the TLS handshake and the first request; this
    # wraps the one place every new connection passes (stable since aiohttp 3.0).
    def __init__(self, check: PeerCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._peer_check = check

    async def _wrap_create_connection(self, *args: Any, **kwargs: Any) -> Any:
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            try:
                await self._peer_check.check(ssl_object)
            except CertificateRejected as rejected:
                transport.close()
                raise PeerRejected(rejected.reason) from None
        return transport, protocol
