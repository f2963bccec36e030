"""The WUS WS-Security profile as data: algorithm URIs, element names, the algorithm tables
signer and verifier accept, and the error they raise. Pure, no I/O.

Invariant: only the algorithms listed in :data:`SIGNATURE_METHODS` / :data:`DIGEST_METHODS`
(RSA with SHA-1/2; no HMAC, DSA or ECDSA) exist for :mod:`digipoort.wus.wsverify`; a
:class:`WSSecurityError` carries a short machine-readable ``code`` and never key material.
Signing is :mod:`digipoort.wus.wssign`, verifying :mod:`digipoort.wus.wsverify`, exclusive
c14n :mod:`digipoort.wus.c14n`. See ``docs/wus-security.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

from cryptography.hazmat.primitives import hashes
from lxml import etree

from .soap import DS_NS, EXC_C14N_NS, WSSE_NS, WSU_NS

RSA_SHA1: Final = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
RSA_SHA256: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA384: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384"
RSA_SHA512: Final = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512"
DIGEST_SHA1: Final = "http://www.w3.org/2000/09/xmldsig#sha1"
DIGEST_SHA256: Final = "http://www.w3.org/2001/04/xmlenc#sha256"
DIGEST_SHA384: Final = "http://www.w3.org/2001/04/xmldsig-more#sha384"
DIGEST_SHA512: Final = "http://www.w3.org/2001/04/xmlenc#sha512"
X509V3: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0#X509v3"
)
BASE64_BINARY: Final = (
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-soap-message-security-1.0#Base64Binary"
)

WSU_TIMESTAMP: Final = f"{{{WSU_NS}}}Timestamp"
WSU_CREATED: Final = f"{{{WSU_NS}}}Created"
WSU_EXPIRES: Final = f"{{{WSU_NS}}}Expires"
WSSE_BST: Final = f"{{{WSSE_NS}}}BinarySecurityToken"
WSSE_STR: Final = f"{{{WSSE_NS}}}SecurityTokenReference"
WSSE_REFERENCE: Final = f"{{{WSSE_NS}}}Reference"
DS_SIGNATURE: Final = f"{{{DS_NS}}}Signature"
DS_SIGNED_INFO: Final = f"{{{DS_NS}}}SignedInfo"
DS_C14N_METHOD: Final = f"{{{DS_NS}}}CanonicalizationMethod"
DS_SIGNATURE_METHOD: Final = f"{{{DS_NS}}}SignatureMethod"
DS_REFERENCE: Final = f"{{{DS_NS}}}Reference"
DS_TRANSFORMS: Final = f"{{{DS_NS}}}Transforms"
DS_TRANSFORM: Final = f"{{{DS_NS}}}Transform"
DS_DIGEST_METHOD: Final = f"{{{DS_NS}}}DigestMethod"
DS_DIGEST_VALUE: Final = f"{{{DS_NS}}}DigestValue"
DS_SIGNATURE_VALUE: Final = f"{{{DS_NS}}}SignatureValue"
DS_KEY_INFO: Final = f"{{{DS_NS}}}KeyInfo"
EC_INCLUSIVE_NAMESPACES: Final = f"{{{EXC_C14N_NS}}}InclusiveNamespaces"

# Signature method URI -> (short name, hash name). HMAC and DSA/ECDSA are not accepted.
SIGNATURE_METHODS: Final[Mapping[str, tuple[str, str]]] = {
    RSA_SHA1: ("rsa-sha1", "sha1"),
    RSA_SHA256: ("rsa-sha256", "sha256"),
    RSA_SHA384: ("rsa-sha384", "sha384"),
    RSA_SHA512: ("rsa-sha512", "sha512"),
}
DIGEST_METHODS: Final[Mapping[str, str]] = {
    DIGEST_SHA1: "sha1",
    DIGEST_SHA256: "sha256",
    DIGEST_SHA384: "sha384",
    DIGEST_SHA512: "sha512",
}
CRYPTO_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class WSSecurityError(Exception):
    """The WS-Security header is missing, malformed, or does not verify.

    ``code`` is a short machine-readable reason; ``message`` never contains key material.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def fail(code: str, message: str) -> WSSecurityError:
    return WSSecurityError(code, message)


def element_children(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)
