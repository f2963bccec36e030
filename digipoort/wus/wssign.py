"""Signing a SOAP 1.1 envelope for WUS: WS-Security header, Timestamp, token, signature.
Pure, no I/O.

Invariant: the output carries one wsse:Security (mustUnderstand="1", first header) with a
wsu:Timestamp, the X.509v3 BinarySecurityToken of the key that signs, and one ds:Signature
(exclusive c14n) referencing the Timestamp, every WS-Addressing header and the Body — the
profile :func:`digipoort.wus.wsverify.verify_envelope` demands. The input is not modified;
a key that does not match the certificate is refused before anything is signed.
Answers of the gateway itself mostly take the faster template path
(:mod:`adapters.wus.response_signing`), which produces the same shape.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from .c14n import exc_c14n
from .soap import (
    DS_NS,
    EXC_C14N_NS,
    SOAP_BODY,
    SOAP_ENVELOPE,
    SOAP_HEADER,
    SOAP_MUST_UNDERSTAND,
    WSA_HEADER_NAMES,
    WSA_NS,
    WSSE_NS,
    WSSE_SECURITY,
    WSU_ID,
    WSU_NS,
    new_wsu_id,
)
from .wsprofile import (
    BASE64_BINARY,
    CRYPTO_HASHES,
    DIGEST_SHA1,
    DIGEST_SHA256,
    DS_C14N_METHOD,
    DS_DIGEST_METHOD,
    DS_DIGEST_VALUE,
    DS_KEY_INFO,
    DS_REFERENCE,
    DS_SIGNATURE,
    DS_SIGNATURE_METHOD,
    DS_SIGNATURE_VALUE,
    DS_SIGNED_INFO,
    DS_TRANSFORM,
    DS_TRANSFORMS,
    RSA_SHA1,
    RSA_SHA256,
    WSSE_BST,
    WSSE_REFERENCE,
    WSSE_STR,
    WSU_CREATED,
    WSU_EXPIRES,
    WSU_TIMESTAMP,
    X509V3,
    element_children,
    utc,
)

__all__ = ["sign_envelope"]

# algorithm parameter of sign_envelope -> (signature method, digest method, hash name)
_SIGNING_SUITES: Final[Mapping[str, tuple[str, str, str]]] = {
    "sha256": (RSA_SHA256, DIGEST_SHA256, "sha256"),
    "sha1": (RSA_SHA1, DIGEST_SHA1, "sha1"),
}
_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _format_time(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _rsa_public_numbers(certificate: x509.Certificate) -> rsa.RSAPublicNumbers | None:
    key = certificate.public_key()
    return key.public_numbers() if isinstance(key, rsa.RSAPublicKey) else None


def _ensure_id(element: etree._Element, prefix: str) -> str:
    for attribute in (WSU_ID, "Id", "ID"):
        value = element.get(attribute)
        if value:
            return value
    value = new_wsu_id(prefix)
    element.set(WSU_ID, value)
    return value


def _header_and_body(root: etree._Element) -> tuple[etree._Element, etree._Element]:
    if root.tag != SOAP_ENVELOPE:
        raise ValueError("not a SOAP 1.1 envelope")
    children = element_children(root)
    bodies = [c for c in children if c.tag == SOAP_BODY]
    if len(bodies) != 1:
        raise ValueError("envelope must contain exactly one soap:Body")
    headers = [c for c in children if c.tag == SOAP_HEADER]
    if len(headers) > 1:
        raise ValueError("envelope contains more than one soap:Header")
    if headers:
        return headers[0], bodies[0]
    header = etree.SubElement(root, SOAP_HEADER)  # created in place: reuses the soap prefix
    root.insert(root.index(bodies[0]), header)
    return header, bodies[0]


def _signing_targets(header: etree._Element, body: etree._Element) -> list[etree._Element]:
    wsa = [
        c
        for c in element_children(header)
        if etree.QName(c).namespace == WSA_NS and etree.QName(c).localname in WSA_HEADER_NAMES
    ]
    return [*wsa, body]


def _add_reference(
    signed_info: etree._Element, target: etree._Element, target_id: str, suite: tuple[str, str, str]
) -> None:
    _signature_uri, digest_uri, hash_name = suite
    reference = etree.SubElement(signed_info, DS_REFERENCE, {"URI": "#" + target_id})
    transforms = etree.SubElement(reference, DS_TRANSFORMS)
    etree.SubElement(transforms, DS_TRANSFORM, {"Algorithm": EXC_C14N_NS})
    etree.SubElement(reference, DS_DIGEST_METHOD, {"Algorithm": digest_uri})
    digest = hashlib.new(hash_name, exc_c14n(target)).digest()
    etree.SubElement(reference, DS_DIGEST_VALUE).text = base64.b64encode(digest).decode("ascii")


def sign_envelope(
    envelope: etree._Element,
    private_key: rsa.RSAPrivateKey,
    certificate: x509.Certificate,
    *,
    algorithm: Literal["sha256", "sha1"] = "sha256",
    timestamp_ttl: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
) -> bytes:
    """Return a serialized, signed copy of ``envelope`` (the input is not modified).

    Adds wsse:Security (mustUnderstand="1", first header) with wsu:Timestamp, an X.509v3
    BinarySecurityToken and a ds:Signature with one exclusive-c14n reference each for the
    Timestamp, every WS-Addressing header and the Body. Output: UTF-8 with XML declaration,
    not pretty-printed.
    """
    suite = _SIGNING_SUITES.get(algorithm)
    if suite is None:
        raise ValueError("algorithm must be 'sha256' or 'sha1'")
    if not isinstance(private_key, rsa.RSAPrivateKey):
        raise TypeError("private_key must be an RSA private key")
    if _rsa_public_numbers(certificate) != private_key.public_key().public_numbers():
        raise ValueError("certificate does not match the private key")
    created = utc(now)
    root = copy.deepcopy(envelope)
    header, body = _header_and_body(root)
    if any(c.tag == WSSE_SECURITY for c in element_children(header)):
        raise ValueError("envelope already contains a wsse:Security header")
    targets = [(_ensure_id(t, etree.QName(t).localname), t) for t in _signing_targets(header, body)]

    security = etree.SubElement(
        header, WSSE_SECURITY, {SOAP_MUST_UNDERSTAND: "1"}, nsmap={"wsse": WSSE_NS, "wsu": WSU_NS}
    )
    header.insert(0, security)
    timestamp_id = new_wsu_id("TS")
    timestamp = etree.SubElement(security, WSU_TIMESTAMP, {WSU_ID: timestamp_id})
    etree.SubElement(timestamp, WSU_CREATED).text = _format_time(created)
    etree.SubElement(timestamp, WSU_EXPIRES).text = _format_time(created + timestamp_ttl)
    token_id = new_wsu_id("X509")
    token = etree.SubElement(
        security,
        WSSE_BST,
        {"EncodingType": BASE64_BINARY, "ValueType": X509V3, WSU_ID: token_id},
    )
    token.text = base64.b64encode(certificate.public_bytes(Encoding.DER)).decode("ascii")

    signature = etree.SubElement(security, DS_SIGNATURE, nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, DS_SIGNED_INFO)
    etree.SubElement(signed_info, DS_C14N_METHOD, {"Algorithm": EXC_C14N_NS})
    etree.SubElement(signed_info, DS_SIGNATURE_METHOD, {"Algorithm": suite[0]})
    for target_id, target in [(timestamp_id, timestamp), *targets]:
        _add_reference(signed_info, target, target_id, suite)
    value = private_key.sign(exc_c14n(signed_info), padding.PKCS1v15(), CRYPTO_HASHES[suite[2]]())
    etree.SubElement(signature, DS_SIGNATURE_VALUE).text = base64.b64encode(value).decode("ascii")
    reference = etree.SubElement(
        etree.SubElement(etree.SubElement(signature, DS_KEY_INFO), WSSE_STR), WSSE_REFERENCE
    )
    reference.set("URI", "#" + token_id)
    reference.set("ValueType", X509V3)
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)
