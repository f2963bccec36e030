"""Verifying the WS-Security header of a parsed WUS envelope. Pure, no I/O.

Invariant: :func:`verify_envelope` returns only when one signature, by the RSA key
(>= 2048 bits) of the BinarySecurityToken it references directly, covers the Body, the
Timestamp and every WS-Addressing header *in their proper places* (no wrapping: a second
Body, a duplicated Id or a reference to an element out of place is refused), with only
exclusive c14n and the algorithms of :mod:`digipoort.wus.wsprofile`; otherwise it raises
:class:`~digipoort.wus.wsprofile.WSSecurityError` with a short code. The checks run
cheapest first; the RSA operation and the digests come last.

It proves only that the message was signed by the key of the embedded certificate;
trusting that certificate (PKIoverheid chain, revocation, binding to the TLS client
certificate / OIN) is the caller's job. See ``docs/wus-security.md``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree

from .c14n import exc_c14n
from .soap import (
    EXC_C14N_NS,
    SOAP_BODY,
    WSA_NS,
    WSSE_SECURITY,
    WSU_NS,
    ParsedEnvelope,
)
from .wsprofile import (
    BASE64_BINARY,
    CRYPTO_HASHES,
    DIGEST_METHODS,
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
    EC_INCLUSIVE_NAMESPACES,
    SIGNATURE_METHODS,
    WSSE_BST,
    WSSE_REFERENCE,
    WSSE_STR,
    WSU_CREATED,
    WSU_EXPIRES,
    WSU_TIMESTAMP,
    X509V3,
    element_children,
    fail,
    utc,
)

__all__ = ["VerifiedSecurity", "verify_envelope"]

_MAX_REFERENCES: Final = 32
_MAX_PREFIXES: Final = 64
_MIN_RSA_BITS: Final = 2048
_PREFIX_RE: Final = re.compile(r"#default|[A-Za-z_][A-Za-z0-9._-]*")
_XSD_DATETIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,12}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_ID_XPATH: Final = etree.XPath("//@wsu:Id | //@Id | //@ID | //@xml:id", namespaces={"wsu": WSU_NS})


@dataclass(frozen=True, slots=True)
class VerifiedSecurity:
    """What a successful verification proved."""

    certificate: x509.Certificate  # the signer (NOT yet checked for trust/validity)
    signed_parts: frozenset[str]  # "Body", "Timestamp", "To", ..., "BinarySecurityToken"
    algorithm: str  # signature method, e.g. "rsa-sha256" or "rsa-sha1"
    created: datetime | None  # None only when require_timestamp=False and none was sent
    expires: datetime | None
    digest_algorithms: frozenset[str] = frozenset()  # e.g. {"sha1"}


@dataclass(frozen=True, slots=True)
class _ReferenceSpec:
    target_id: str
    prefixes: tuple[str, ...]
    hash_name: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class _SignedInfoSpec:
    element: etree._Element
    prefixes: tuple[str, ...]
    algorithm: str
    hash_name: str
    references: tuple[_ReferenceSpec, ...]


def _parse_time(element: etree._Element) -> datetime:
    match = _XSD_DATETIME_RE.fullmatch((element.text or "").strip())
    if match is None or element_children(element):
        raise fail("bad_timestamp", "timestamp value is not an xs:dateTime with time zone")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), micros, UTC
        )
        if zone != "Z":
            offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
            moment = moment - offset if zone[0] == "+" else moment + offset
    except (ValueError, OverflowError):
        raise fail("bad_timestamp", "timestamp value out of range") from None
    return moment


def _b64decode(text: str | None, code: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise fail(code, f"{what} is not valid base64") from None


def _single_security(parsed: ParsedEnvelope) -> etree._Element:
    found = [c for c in element_children(parsed.header) if c.tag == WSSE_SECURITY]
    if not found:
        raise fail("missing_security", "no wsse:Security header")
    if len(found) > 1:
        raise fail("multiple_security", "more than one wsse:Security header")
    return found[0]


def _single_signature(security: etree._Element) -> etree._Element:
    found = list(security.iter(DS_SIGNATURE))
    if not found:
        raise fail("missing_signature", "no ds:Signature in wsse:Security")
    if len(found) > 1:
        raise fail("multiple_signatures", "more than one ds:Signature in wsse:Security")
    if found[0].getparent() is not security:
        raise fail("malformed_signature", "ds:Signature is not a child of wsse:Security")
    return found[0]


def _reject_extra_bodies(parsed: ParsedEnvelope) -> None:
    if any(element is not parsed.body for element in parsed.root.iter(SOAP_BODY)):
        raise fail("signature_wrapping", "a second soap:Body exists in the message")


def _collect_ids(root: etree._Element) -> dict[str, etree._Element]:
    ids: dict[str, etree._Element] = {}
    result = cast(list[object], _ID_XPATH(root))
    for value in result:
        if not isinstance(value, etree._ElementUnicodeResult):
            continue
        owner = value.getparent()
        key = str(value)
        if owner is None:
            continue
        if key in ids:
            raise fail("duplicate_id", f"Id {key[:64]!r} occurs more than once")
        ids[key] = owner
    return ids


def _find_timestamp(security: etree._Element, *, required: bool) -> etree._Element | None:
    found = [c for c in element_children(security) if c.tag == WSU_TIMESTAMP]
    if len(found) > 1:
        raise fail("multiple_timestamps", "more than one wsu:Timestamp")
    if not found:
        if required:
            raise fail("missing_timestamp", "no wsu:Timestamp in wsse:Security")
        return None
    return found[0]


def _read_timestamp(timestamp: etree._Element) -> tuple[datetime, datetime | None]:
    children = element_children(timestamp)
    if not children or children[0].tag != WSU_CREATED:
        raise fail("bad_timestamp", "wsu:Timestamp must start with wsu:Created")
    created = _parse_time(children[0])
    if len(children) == 1:
        return created, None
    if len(children) != 2 or children[1].tag != WSU_EXPIRES:
        raise fail("bad_timestamp", "unexpected content in wsu:Timestamp")
    expires = _parse_time(children[1])
    if expires < created:
        raise fail("bad_timestamp", "wsu:Expires before wsu:Created")
    return created, expires


def _check_freshness(
    created: datetime, expires: datetime | None, now: datetime, skew: timedelta
) -> None:
    if created > now + skew:
        raise fail("timestamp_in_future", "wsu:Created is in the future")
    if created < now - skew:
        raise fail("timestamp_expired", "wsu:Created is too old")
    if expires is not None and expires < now - skew:
        raise fail("timestamp_expired", "wsu:Expires has passed")


def _prefix_list(method: etree._Element, code: str) -> tuple[str, ...]:
    """Validate an exclusive-c14n method/transform element; return its PrefixList."""
    if method.get("Algorithm") != EXC_C14N_NS:
        raise fail(code, "only exclusive c14n (without comments) is accepted")
    children = element_children(method)
    if not children:
        return ()
    if len(children) != 1 or children[0].tag != EC_INCLUSIVE_NAMESPACES:
        raise fail("malformed_signature", "unexpected content in c14n method")
    prefixes = tuple((children[0].get("PrefixList") or "").split())
    if len(prefixes) > _MAX_PREFIXES or not all(_PREFIX_RE.fullmatch(p) for p in prefixes):
        raise fail("malformed_signature", "invalid InclusiveNamespaces PrefixList")
    return prefixes


def _hash_name(algorithm_uri: str | None, allow_sha1: bool) -> str:
    name = DIGEST_METHODS.get(algorithm_uri or "")
    if name is None:
        raise fail("unsupported_algorithm", "unsupported digest method")
    if name == "sha1" and not allow_sha1:
        raise fail("sha1_not_allowed", "SHA-1 digests are not allowed")
    return name


def _parse_reference(reference: etree._Element, allow_sha1: bool) -> _ReferenceSpec:
    uri = reference.get("URI") or ""
    if not uri.startswith("#") or len(uri) < 2 or "(" in uri:
        raise fail("bad_reference", "only same-document #id references are accepted")
    children = element_children(reference)
    if len(children) == 2 and children[0].tag == DS_DIGEST_METHOD:
        raise fail("unsupported_transform", "reference without exclusive c14n transform")
    if len(children) != 3 or [c.tag for c in children] != [
        DS_TRANSFORMS,
        DS_DIGEST_METHOD,
        DS_DIGEST_VALUE,
    ]:
        raise fail("malformed_signature", "malformed ds:Reference")
    transforms = element_children(children[0])
    if len(transforms) != 1 or transforms[0].tag != DS_TRANSFORM:
        raise fail("unsupported_transform", "exactly one exclusive c14n transform required")
    prefixes = _prefix_list(transforms[0], "unsupported_transform")
    if element_children(children[1]):
        raise fail("malformed_signature", "unexpected content in ds:DigestMethod")
    hash_name = _hash_name(children[1].get("Algorithm"), allow_sha1)
    digest = _b64decode(children[2].text, "malformed_signature", "ds:DigestValue")
    if len(digest) != hashlib.new(hash_name).digest_size:
        raise fail("malformed_signature", "ds:DigestValue has the wrong length")
    return _ReferenceSpec(uri[1:], prefixes, hash_name, digest)


def _parse_signed_info(signed_info: etree._Element, allow_sha1: bool) -> _SignedInfoSpec:
    children = element_children(signed_info)
    if (
        len(children) < 3
        or children[0].tag != DS_C14N_METHOD
        or children[1].tag != DS_SIGNATURE_METHOD
    ):
        raise fail("malformed_signature", "malformed ds:SignedInfo")
    prefixes = _prefix_list(children[0], "unsupported_algorithm")
    method = SIGNATURE_METHODS.get(children[1].get("Algorithm") or "")
    if method is None:
        raise fail("unsupported_algorithm", "unsupported signature method")
    if element_children(children[1]):
        raise fail("malformed_signature", "unexpected content in ds:SignatureMethod")
    algorithm, hash_name = method
    if hash_name == "sha1" and not allow_sha1:
        raise fail("sha1_not_allowed", "rsa-sha1 signatures are not allowed")
    references = children[2:]
    if len(references) > _MAX_REFERENCES or any(r.tag != DS_REFERENCE for r in references):
        raise fail("malformed_signature", "malformed ds:SignedInfo references")
    specs = tuple(_parse_reference(r, allow_sha1) for r in references)
    return _SignedInfoSpec(signed_info, prefixes, algorithm, hash_name, specs)


def _signature_parts(
    signature: etree._Element,
) -> tuple[etree._Element, etree._Element, etree._Element]:
    children = element_children(signature)
    tags = [c.tag for c in children]
    if tags[:2] != [DS_SIGNED_INFO, DS_SIGNATURE_VALUE]:
        raise fail("malformed_signature", "ds:Signature must start with SignedInfo, SignatureValue")
    if len(children) == 2:
        raise fail("missing_token", "ds:Signature has no ds:KeyInfo")
    if tags[2:] != [DS_KEY_INFO]:
        raise fail("malformed_signature", "unexpected content in ds:Signature")
    return children[0], children[1], children[2]


def _classify(
    target: etree._Element,
    parsed: ParsedEnvelope,
    security: etree._Element,
    timestamp: etree._Element | None,
) -> str:
    """Name the part a reference points at; refuse anything not in its proper place."""
    if target is parsed.body:
        return "Body"
    if timestamp is not None and target is timestamp:
        return "Timestamp"
    parent = target.getparent()
    if parent is security and target.tag == WSSE_BST:
        return "BinarySecurityToken"
    if parent is parsed.header and target.tag != WSSE_SECURITY:
        qname = etree.QName(target)
        if qname.namespace != WSA_NS:
            return str(target.tag)  # an (explicitly allowed) custom header
        if parsed.wsa_headers.get(qname.localname) is target:
            return qname.localname
    raise fail("signature_wrapping", "a reference points at an element out of place")


def _resolve(
    spec: _SignedInfoSpec,
    ids: Mapping[str, etree._Element],
    parsed: ParsedEnvelope,
    security: etree._Element,
    timestamp: etree._Element | None,
) -> list[tuple[str, etree._Element, _ReferenceSpec]]:
    resolved: list[tuple[str, etree._Element, _ReferenceSpec]] = []
    seen: set[str] = set()
    for reference in spec.references:
        target = ids.get(reference.target_id)
        if target is None:
            raise fail("reference_not_found", "a ds:Reference points at no element")
        part = _classify(target, parsed, security, timestamp)
        if part in seen:
            raise fail("part_signed_twice", f"{part} is referenced more than once")
        seen.add(part)
        resolved.append((part, target, reference))
    required = {"Body", *parsed.wsa_headers}
    if timestamp is not None:
        required.add("Timestamp")
    missing = required - seen
    if missing:
        raise fail("unsigned_part", "not signed: " + ", ".join(sorted(missing)))
    return resolved


def _load_certificate(der: bytes) -> tuple[x509.Certificate, rsa.RSAPublicKey | None]:
    certificate = x509.load_der_x509_certificate(der)
    key = certificate.public_key()
    return certificate, key if isinstance(key, rsa.RSAPublicKey) else None


def _signing_key(
    key_info: etree._Element, security: etree._Element, ids: Mapping[str, etree._Element]
) -> tuple[x509.Certificate, rsa.RSAPublicKey]:
    children = element_children(key_info)
    if len(children) != 1 or children[0].tag != WSSE_STR:
        raise fail("unsupported_token_reference", "KeyInfo must hold one SecurityTokenReference")
    references = element_children(children[0])
    if len(references) != 1 or references[0].tag != WSSE_REFERENCE:
        raise fail("unsupported_token_reference", "only a direct wsse:Reference is accepted")
    uri = references[0].get("URI") or ""
    value_type = references[0].get("ValueType")
    if not uri.startswith("#") or len(uri) < 2 or value_type not in (None, X509V3):
        raise fail("unsupported_token_reference", "direct reference to an X509v3 token required")
    token = ids.get(uri[1:])
    if token is None:
        raise fail("missing_token", "referenced BinarySecurityToken not found")
    if token.tag != WSSE_BST or token.getparent() is not security:
        raise fail("bad_token", "key reference does not point at a BinarySecurityToken")
    if token.get("ValueType") != X509V3 or token.get("EncodingType") not in (None, BASE64_BINARY):
        raise fail("bad_token", "BinarySecurityToken is not a base64 X509v3 certificate")
    der = _b64decode(token.text, "bad_token", "BinarySecurityToken")
    try:
        certificate, key = _load_certificate(der)
    except (ValueError, UnsupportedAlgorithm):
        raise fail("bad_token", "BinarySecurityToken is not a valid X.509 certificate") from None
    if key is None:
        raise fail("unsupported_algorithm", "signing certificate does not hold an RSA key")
    if key.key_size < _MIN_RSA_BITS:
        raise fail("weak_key", f"RSA key shorter than {_MIN_RSA_BITS} bits")
    return certificate, key


def _verify_signature_value(
    spec: _SignedInfoSpec, signature_value: etree._Element, key: rsa.RSAPublicKey
) -> None:
    value = _b64decode(signature_value.text, "malformed_signature", "ds:SignatureValue")
    try:
        key.verify(
            value,
            exc_c14n(spec.element, spec.prefixes),
            padding.PKCS1v15(),
            CRYPTO_HASHES[spec.hash_name](),
        )
    except (InvalidSignature, ValueError):
        raise fail("bad_signature", "SignatureValue does not verify") from None


def _verify_digests(resolved: list[tuple[str, etree._Element, _ReferenceSpec]]) -> None:
    for part, target, reference in resolved:
        actual = hashlib.new(reference.hash_name, exc_c14n(target, reference.prefixes)).digest()
        if not hmac.compare_digest(actual, reference.digest):
            raise fail("digest_mismatch", f"digest of {part} does not match")


def verify_envelope(
    parsed: ParsedEnvelope,
    *,
    allow_sha1: bool = True,
    max_clock_skew: timedelta = timedelta(minutes=5),
    now: datetime | None = None,
    require_timestamp: bool = True,
) -> VerifiedSecurity:
    """Verify the WS-Security header of a parsed envelope; raise WSSecurityError if not OK.

    Checks, cheapest first: one Security header with one Signature; no second soap:Body;
    unique Ids; Timestamp shape; SignedInfo shape and algorithms (exclusive c14n only,
    rsa-sha1/sha1 only if ``allow_sha1``); every reference resolves to Body, Timestamp,
    a WS-Addressing header or the token *in its proper place*, each at most once, and
    Body, Timestamp and every WS-Addressing header are covered; the key is the RSA key
    (>= 2048 bits) of the BinarySecurityToken referenced directly from KeyInfo; Created
    lies within ``max_clock_skew`` of ``now`` and Expires (if any) has not passed;
    finally the SignatureValue and every digest.
    """
    moment = utc(now)
    security = _single_security(parsed)
    signature = _single_signature(security)
    _reject_extra_bodies(parsed)
    ids = _collect_ids(parsed.root)
    timestamp = _find_timestamp(security, required=require_timestamp)
    created, expires = _read_timestamp(timestamp) if timestamp is not None else (None, None)
    signed_info, signature_value, key_info = _signature_parts(signature)
    spec = _parse_signed_info(signed_info, allow_sha1)
    resolved = _resolve(spec, ids, parsed, security, timestamp)
    certificate, key = _signing_key(key_info, security, ids)
    if created is not None:
        _check_freshness(created, expires, moment, max_clock_skew)
    _verify_signature_value(spec, signature_value, key)
    _verify_digests(resolved)
    return VerifiedSecurity(
        certificate=certificate,
        signed_parts=frozenset(part for part, _target, _ref in resolved),
        algorithm=spec.algorithm,
        created=created,
        expires=expires,
        digest_algorithms=frozenset(r.hash_name for r in spec.references),
    )
