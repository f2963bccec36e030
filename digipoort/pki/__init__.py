"""PKI: the dev PKI, certificate verification (trust roots, CRLs, OIN) and TLS contexts.

See ``docs/pki.md``.
"""

from digipoort.pki.devpki import (
    ALFA,
    GATEWAY_OIN,
    DevParticipant,
    DevPkiLayout,
    create_dev_pki,
)
from digipoort.pki.tls import (
    TLSConfigError,
    client_ssl_context,
    peer_certificate,
    refresh_crl,
    server_ssl_context,
)
from digipoort.pki.trust import (
    CertificateRejected,
    CertificateVerifier,
    RejectReason,
    VerifiedIdentity,
    certificate_file_oin,
    is_valid_oin,
    load_crls,
    oin_from_certificate,
)

__all__ = [
    "ALFA",
    "GATEWAY_OIN",
    "CertificateRejected",
    "CertificateVerifier",
    "DevParticipant",
    "DevPkiLayout",
    "RejectReason",
    "TLSConfigError",
    "VerifiedIdentity",
    "certificate_file_oin",
    "client_ssl_context",
    "create_dev_pki",
    "is_valid_oin",
    "load_crls",
    "oin_from_certificate",
    "peer_certificate",
    "refresh_crl",
    "server_ssl_context",
]
