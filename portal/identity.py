"""Who is calling: the verified client certificate's OIN, and whether it is an operator.

The TLS handshake already refused untrusted, expired and revoked certificates; the
verifier checks the chain, revocation and OIN again (as every koppelvlak does) and gives
the identity. Operators are named in ``portal.operators`` by OIN or by the certificate's
SHA-256 fingerprint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

from digipoort.pki import CertificateRejected, CertificateVerifier, peer_certificate
from digipoort.registry import Registry

CALLER_KEY = web.AppKey("caller", object)


@dataclass(frozen=True)
class Caller:
    oin: str
    name: str
    fingerprint: str
    operator: bool
    participant: bool

    @property
    def actor(self) -> str:
        """How audit rows and logs name the caller."""
        return f"portal:{self.oin}:{self.fingerprint[:16]}"


def caller_of(
    request: web.Request,
    verifier: CertificateVerifier,
    operators: Sequence[str],
    registry: Registry,
) -> Caller | None:
    """The caller, or None without a (valid) client certificate."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    cert = peer_certificate(ssl_object) if ssl_object is not None else None
    if cert is None:
        return None
    try:
        identity = verifier.verify(cert)
    except CertificateRejected:
        return None
    wanted = {o.lower() for o in operators}
    operator = identity.oin in wanted or identity.fingerprint_sha256.lower() in wanted
    participant = registry.participants.get(identity.oin)
    name = participant.name if participant else identity.subject
    return Caller(
        oin=identity.oin,
        name=name,
        fingerprint=identity.fingerprint_sha256.lower(),
        operator=operator,
        participant=participant is not None,
    )
