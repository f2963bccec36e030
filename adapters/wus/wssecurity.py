"""WS-Security for the Digipoort koppelvlak WUS: sign and verify SOAP 1.1 envelopes.

Profile (from the WSDL documentation): wsu:Timestamp, X.509v3 BinarySecurityToken with a
direct SecurityTokenReference, one XML-DSig signature with exclusive c14n, one reference
each for the Timestamp, every WS-Addressing header and the Body. rsa-sha1/sha1 is the
published profile (legacy, allowed by default); rsa-sha256/sha256 is what we sign with.

Pure functions, no I/O. The verifier only proves that the message was signed by the key of
the embedded certificate; trusting that certificate (PKIoverheid chain, revocation, binding
to the TLS client certificate / OIN) is the caller's job. See ``docs/wus-security.md``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

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
    XML_NS,
    ParsedEnvelope,
    new_wsu_id,
)

__all__ = [
    "BASE64_BINARY",
    "DIGEST_SHA1",
    "DIGEST_SHA256",
    "RSA_SHA1",
    "RSA_SHA256",
    "X509V3",
    "VerifiedSecurity",
    "WSSecurityError",
    "sign_envelope",
    "verify_envelope",
]

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

_WSU_TIMESTAMP: Final = f"{{{WSU_NS}}}Timestamp"
_WSU_CREATED: Final = f"{{{WSU_NS}}}Created"
_WSU_EXPIRES: Final = f"{{{WSU_NS}}}Expires"
_WSSE_BST: Final = f"{{{WSSE_NS}}}BinarySecurityToken"
_WSSE_STR: Final = f"{{{WSSE_NS}}}SecurityTokenReference"
_WSSE_REFERENCE: Final = f"{{{WSSE_NS}}}Reference"
_DS_SIGNATURE: Final = f"{{{DS_NS}}}Signature"
_DS_SIGNED_INFO: Final = f"{{{DS_NS}}}SignedInfo"
_DS_C14N_METHOD: Final = f"{{{DS_NS}}}CanonicalizationMethod"
_DS_SIGNATURE_METHOD: Final = f"{{{DS_NS}}}SignatureMethod"
_DS_REFERENCE: Final = f"{{{DS_NS}}}Reference"
_DS_TRANSFORMS: Final = f"{{{DS_NS}}}Transforms"
_DS_TRANSFORM: Final = f"{{{DS_NS}}}Transform"
_DS_DIGEST_METHOD: Final = f"{{{DS_NS}}}DigestMethod"
_DS_DIGEST_VALUE: Final = f"{{{DS_NS}}}DigestValue"
_DS_SIGNATURE_VALUE: Final = f"{{{DS_NS}}}SignatureValue"
_DS_KEY_INFO: Final = f"{{{DS_NS}}}KeyInfo"
_EC_INCLUSIVE_NAMESPACES: Final = f"{{{EXC_C14N_NS}}}InclusiveNamespaces"

# Signature method URI -> (short name, hash name). HMAC and DSA/ECDSA are not accepted.
_SIGNATURE_METHODS: Final[Mapping[str, tuple[str, str]]] = {
    RSA_SHA1: ("rsa-sha1", "sha1"),
    RSA_SHA256: ("rsa-sha256", "sha256"),
    RSA_SHA384: ("rsa-sha384", "sha384"),
    RSA_SHA512: ("rsa-sha512", "sha512"),
}
_DIGEST_METHODS: Final[Mapping[str, str]] = {
    DIGEST_SHA1: "sha1",
    DIGEST_SHA256: "sha256",
    DIGEST_SHA384: "sha384",
    DIGEST_SHA512: "sha512",
}
_CRYPTO_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
# algorithm parameter of sign_envelope -> (signature method, digest method, hash name)
_SIGNING_SUITES: Final[Mapping[str, tuple[str, str, str]]] = {
    "sha256": (RSA_SHA256, DIGEST_SHA256, "sha256"),
    "sha1": (RSA_SHA1, DIGEST_SHA1, "sha1"),
}

_MAX_REFERENCES: Final = 32
_MAX_PREFIXES: Final = 64
_MIN_RSA_BITS: Final = 2048
_PREFIX_RE: Final = re.compile(r"#default|[A-Za-z_][A-Za-z0-9._-]*")
_XSD_DATETIME_RE: Final = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,12}))?(Z|[+-][0-9]{2}:[0-9]{2})"
)
_ID_XPATH: Final = etree.XPath("//@wsu:Id | //@Id | //@ID | //@xml:id", namespaces={"wsu": WSU_NS})
_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class WSSecurityError(Exception):
    """The WS-Security header is missing, malformed, or does not verify.

    ``code`` is a short machine-readable reason; ``message`` never contains key material.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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


# --------------------------------------------------------------------------- helpers


def _fail(code: str, message: str) -> WSSecurityError:
    return WSSecurityError(code, message)


def _children(parent: etree._Element) -> list[etree._Element]:
    return [child for child in parent if isinstance(child.tag, str)]


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _format_time(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


def _parse_time(element: etree._Element) -> datetime:
    match = _XSD_DATETIME_RE.fullmatch((element.text or "").strip())
    if match is None or _children(element):
        raise _fail("bad_timestamp", "timestamp value is not an xs:dateTime with time zone")
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
        raise _fail("bad_timestamp", "timestamp value out of range") from None
    return moment


def _b64decode(text: str | None, code: str, what: str) -> bytes:
    try:
        return base64.b64decode("".join((text or "").split()), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(code, f"{what} is not valid base64") from None


# --------------------------------------------------------------------------- c14n


def _c14n(element: etree._Element, prefixes: Iterable[str] = ()) -> bytes:
    """Exclusive XML c14n 1.0 (without comments) of ``element``'s subtree."""
    prefix_list = list(prefixes)
    try:
        if "#default" in prefix_list:
            # lxml silently drops "#default" from inclusive_ns_prefixes; do it ourselves.
            return _exc_c14n_python(element, prefix_list)
        return etree.tostring(
            element,
            method="c14n",
            exclusive=True,
            with_comments=False,
            inclusive_ns_prefixes=prefix_list or None,
        )
    except (etree.LxmlError, ValueError) as exc:
        raise _fail("c14n_failed", f"canonicalization failed: {type(exc).__name__}") from None


_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})
_ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        '"': "&quot;",
        "\t": "&#x9;",
        "\n": "&#xA;",
        "\r": "&#xD;",
    }
)


def _exc_c14n_python(apex: etree._Element, prefixes: Iterable[str]) -> bytes:
    """Pure-Python exclusive c14n, used only when the PrefixList contains ``#default``.

    Limitation: lxml does not expose attribute prefixes; if two in-scope prefixes bind
    the same namespace URI, a prefixed attribute may be rendered with the other prefix
    (which can only cause a false digest mismatch, never a false success).
    """
    inclusive = frozenset(None if p == "#default" else p for p in prefixes)
    out: list[str] = []
    _render_element(apex, {None: ""}, inclusive, out)
    return "".join(out).encode("utf-8")


def _attribute_prefix(nsmap: Mapping[str | None, str], namespace: str) -> str:
    if namespace == XML_NS:
        return "xml"
    for prefix, uri in nsmap.items():
        if prefix is not None and uri == namespace:
            return prefix
    raise ValueError("attribute namespace without prefix")


def _render_element(
    element: etree._Element,
    rendered: Mapping[str | None, str],
    inclusive: frozenset[str | None],
    out: list[str],
) -> None:
    nsmap: Mapping[str | None, str] = element.nsmap
    qname = etree.QName(element)
    used: dict[str | None, str] = {element.prefix: qname.namespace or ""}
    attributes: list[tuple[str, str, str, str]] = []
    for name, value in element.attrib.items():
        attr = etree.QName(name)
        if attr.namespace is None:
            attributes.append(("", attr.localname, attr.localname, str(value)))
            continue
        prefix = _attribute_prefix(nsmap, attr.namespace)
        attributes.append(
            (attr.namespace, attr.localname, f"{prefix}:{attr.localname}", str(value))
        )
        if prefix != "xml":
            used[prefix] = attr.namespace
    for listed in inclusive:
        if listed is None:
            used[None] = nsmap.get(None) or ""
        elif listed in nsmap:
            used[listed] = nsmap[listed]
    declare = {p: uri for p, uri in used.items() if rendered.get(p, "") != uri}
    tag = f"{element.prefix}:{qname.localname}" if element.prefix else qname.localname
    out.append("<" + tag)
    if None in declare:
        out.append(f' xmlns="{declare[None].translate(_ATTR_ESCAPES)}"')
    for prefix in sorted(p for p in declare if p is not None):
        out.append(f' xmlns:{prefix}="{declare[prefix].translate(_ATTR_ESCAPES)}"')
    for _ns, _local, name, value in sorted(attributes):
        out.append(f' {name}="{value.translate(_ATTR_ESCAPES)}"')
    out.append(">")
    out.append((element.text or "").translate(_TEXT_ESCAPES))
    child_rendered = {**rendered, **declare}
    for child in element:
        if isinstance(child.tag, str):
            _render_element(child, child_rendered, inclusive, out)
        elif isinstance(child, etree._ProcessingInstruction):
            data = child.text
            out.append(f"<?{child.target} {data}?>" if data else f"<?{child.target}?>")
        out.append((child.tail or "").translate(_TEXT_ESCAPES))
    out.append(f"</{tag}>")


# --------------------------------------------------------------------------- signing


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
    children = _children(root)
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
        for c in _children(header)
        if etree.QName(c).namespace == WSA_NS and etree.QName(c).localname in WSA_HEADER_NAMES
    ]
    return [*wsa, body]


def _add_reference(
    signed_info: etree._Element, target: etree._Element, target_id: str, suite: tuple[str, str, str]
) -> None:
    _signature_uri, digest_uri, hash_name = suite
    reference = etree.SubElement(signed_info, _DS_REFERENCE, {"URI": "#" + target_id})
    transforms = etree.SubElement(reference, _DS_TRANSFORMS)
    etree.SubElement(transforms, _DS_TRANSFORM, {"Algorithm": EXC_C14N_NS})
    etree.SubElement(reference, _DS_DIGEST_METHOD, {"Algorithm": digest_uri})
    digest = hashlib.new(hash_name, _c14n(target)).digest()
    etree.SubElement(reference, _DS_DIGEST_VALUE).text = base64.b64encode(digest).decode("ascii")


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
    created = _utc(now)
    root = copy.deepcopy(envelope)
    header, body = _header_and_body(root)
    if any(c.tag == WSSE_SECURITY for c in _children(header)):
        raise ValueError("envelope already contains a wsse:Security header")
    targets = [(_ensure_id(t, etree.QName(t).localname), t) for t in _signing_targets(header, body)]

    security = etree.SubElement(
        header, WSSE_SECURITY, {SOAP_MUST_UNDERSTAND: "1"}, nsmap={"wsse": WSSE_NS, "wsu": WSU_NS}
    )
    header.insert(0, security)
    timestamp_id = new_wsu_id("TS")
    timestamp = etree.SubElement(security, _WSU_TIMESTAMP, {WSU_ID: timestamp_id})
    etree.SubElement(timestamp, _WSU_CREATED).text = _format_time(created)
    etree.SubElement(timestamp, _WSU_EXPIRES).text = _format_time(created + timestamp_ttl)
    token_id = new_wsu_id("X509")
    token = etree.SubElement(
        security,
        _WSSE_BST,
        {"EncodingType": BASE64_BINARY, "ValueType": X509V3, WSU_ID: token_id},
    )
    token.text = base64.b64encode(certificate.public_bytes(Encoding.DER)).decode("ascii")

    signature = etree.SubElement(security, _DS_SIGNATURE, nsmap={"ds": DS_NS})
    signed_info = etree.SubElement(signature, _DS_SIGNED_INFO)
    etree.SubElement(signed_info, _DS_C14N_METHOD, {"Algorithm": EXC_C14N_NS})
    etree.SubElement(signed_info, _DS_SIGNATURE_METHOD, {"Algorithm": suite[0]})
    for target_id, target in [(timestamp_id, timestamp), *targets]:
        _add_reference(signed_info, target, target_id, suite)
    value = private_key.sign(_c14n(signed_info), padding.PKCS1v15(), _CRYPTO_HASHES[suite[2]]())
    etree.SubElement(signature, _DS_SIGNATURE_VALUE).text = base64.b64encode(value).decode("ascii")
    reference = etree.SubElement(
        etree.SubElement(etree.SubElement(signature, _DS_KEY_INFO), _WSSE_STR), _WSSE_REFERENCE
    )
    reference.set("URI", "#" + token_id)
    reference.set("ValueType", X509V3)
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", xml_declaration=False)


# --------------------------------------------------------------------------- verifying


def _single_security(parsed: ParsedEnvelope) -> etree._Element:
    found = [c for c in _children(parsed.header) if c.tag == WSSE_SECURITY]
    if not found:
        raise _fail("missing_security", "no wsse:Security header")
    if len(found) > 1:
        raise _fail("multiple_security", "more than one wsse:Security header")
    return found[0]


def _single_signature(security: etree._Element) -> etree._Element:
    found = list(security.iter(_DS_SIGNATURE))
    if not found:
        raise _fail("missing_signature", "no ds:Signature in wsse:Security")
    if len(found) > 1:
        raise _fail("multiple_signatures", "more than one ds:Signature in wsse:Security")
    if found[0].getparent() is not security:
        raise _fail("malformed_signature", "ds:Signature is not a child of wsse:Security")
    return found[0]


def _reject_extra_bodies(parsed: ParsedEnvelope) -> None:
    if any(element is not parsed.body for element in parsed.root.iter(SOAP_BODY)):
        raise _fail("signature_wrapping", "a second soap:Body exists in the message")


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
            raise _fail("duplicate_id", f"Id {key[:64]!r} occurs more than once")
        ids[key] = owner
    return ids


def _find_timestamp(security: etree._Element, *, required: bool) -> etree._Element | None:
    found = [c for c in _children(security) if c.tag == _WSU_TIMESTAMP]
    if len(found) > 1:
        raise _fail("multiple_timestamps", "more than one wsu:Timestamp")
    if not found:
        if required:
            raise _fail("missing_timestamp", "no wsu:Timestamp in wsse:Security")
        return None
    return found[0]


def _read_timestamp(timestamp: etree._Element) -> tuple[datetime, datetime | None]:
    children = _children(timestamp)
    if not children or children[0].tag != _WSU_CREATED:
        raise _fail("bad_timestamp", "wsu:Timestamp must start with wsu:Created")
    created = _parse_time(children[0])
    if len(children) == 1:
        return created, None
    if len(children) != 2 or children[1].tag != _WSU_EXPIRES:
        raise _fail("bad_timestamp", "unexpected content in wsu:Timestamp")
    expires = _parse_time(children[1])
    if expires < created:
        raise _fail("bad_timestamp", "wsu:Expires before wsu:Created")
    return created, expires


def _check_freshness(
    created: datetime, expires: datetime | None, now: datetime, skew: timedelta
) -> None:
    if created > now + skew:
        raise _fail("timestamp_in_future", "wsu:Created is in the future")
    if created < now - skew:
        raise _fail("timestamp_expired", "wsu:Created is too old")
    if expires is not None and expires < now - skew:
        raise _fail("timestamp_expired", "wsu:Expires has passed")


def _prefix_list(method: etree._Element, code: str) -> tuple[str, ...]:
    """Validate an exclusive-c14n method/transform element; return its PrefixList."""
    if method.get("Algorithm") != EXC_C14N_NS:
        raise _fail(code, "only exclusive c14n (without comments) is accepted")
    children = _children(method)
    if not children:
        return ()
    if len(children) != 1 or children[0].tag != _EC_INCLUSIVE_NAMESPACES:
        raise _fail("malformed_signature", "unexpected content in c14n method")
    prefixes = tuple((children[0].get("PrefixList") or "").split())
    if len(prefixes) > _MAX_PREFIXES or not all(_PREFIX_RE.fullmatch(p) for p in prefixes):
        raise _fail("malformed_signature", "invalid InclusiveNamespaces PrefixList")
    return prefixes


def _hash_name(algorithm_uri: str | None, allow_sha1: bool) -> str:
    name = _DIGEST_METHODS.get(algorithm_uri or "")
    if name is None:
        raise _fail("unsupported_algorithm", "unsupported digest method")
    if name == "sha1" and not allow_sha1:
        raise _fail("sha1_not_allowed", "SHA-1 digests are not allowed")
    return name


def _parse_reference(reference: etree._Element, allow_sha1: bool) -> _ReferenceSpec:
    uri = reference.get("URI") or ""
    if not uri.startswith("#") or len(uri) < 2 or "(" in uri:
        raise _fail("bad_reference", "only same-document #id references are accepted")
    children = _children(reference)
    if len(children) == 2 and children[0].tag == _DS_DIGEST_METHOD:
        raise _fail("unsupported_transform", "reference without exclusive c14n transform")
    if len(children) != 3 or [c.tag for c in children] != [
        _DS_TRANSFORMS,
        _DS_DIGEST_METHOD,
        _DS_DIGEST_VALUE,
    ]:
        raise _fail("malformed_signature", "malformed ds:Reference")
    transforms = _children(children[0])
    if len(transforms) != 1 or transforms[0].tag != _DS_TRANSFORM:
        raise _fail("unsupported_transform", "exactly one exclusive c14n transform required")
    prefixes = _prefix_list(transforms[0], "unsupported_transform")
    if _children(children[1]):
        raise _fail("malformed_signature", "unexpected content in ds:DigestMethod")
    hash_name = _hash_name(children[1].get("Algorithm"), allow_sha1)
    digest = _b64decode(children[2].text, "malformed_signature", "ds:DigestValue")
    if len(digest) != hashlib.new(hash_name).digest_size:
        raise _fail("malformed_signature", "ds:DigestValue has the wrong length")
    return _ReferenceSpec(uri[1:], prefixes, hash_name, digest)


def _parse_signed_info(signed_info: etree._Element, allow_sha1: bool) -> _SignedInfoSpec:
    children = _children(signed_info)
    if (
        len(children) < 3
        or children[0].tag != _DS_C14N_METHOD
        or children[1].tag != _DS_SIGNATURE_METHOD
    ):
        raise _fail("malformed_signature", "malformed ds:SignedInfo")
    prefixes = _prefix_list(children[0], "unsupported_algorithm")
    method = _SIGNATURE_METHODS.get(children[1].get("Algorithm") or "")
    if method is None:
        raise _fail("unsupported_algorithm", "unsupported signature method")
    if _children(children[1]):
        raise _fail("malformed_signature", "unexpected content in ds:SignatureMethod")
    algorithm, hash_name = method
    if hash_name == "sha1" and not allow_sha1:
        raise _fail("sha1_not_allowed", "rsa-sha1 signatures are not allowed")
    references = children[2:]
    if len(references) > _MAX_REFERENCES or any(r.tag != _DS_REFERENCE for r in references):
        raise _fail("malformed_signature", "malformed ds:SignedInfo references")
    specs = tuple(_parse_reference(r, allow_sha1) for r in references)
    return _SignedInfoSpec(signed_info, prefixes, algorithm, hash_name, specs)


def _signature_parts(
    signature: etree._Element,
) -> tuple[etree._Element, etree._Element, etree._Element]:
    children = _children(signature)
    tags = [c.tag for c in children]
    if tags[:2] != [_DS_SIGNED_INFO, _DS_SIGNATURE_VALUE]:
        raise _fail(
            "malformed_signature", "ds:Signature must start with SignedInfo, SignatureValue"
        )
    if len(children) == 2:
        raise _fail("missing_token", "ds:Signature has no ds:KeyInfo")
    if tags[2:] != [_DS_KEY_INFO]:
        raise _fail("malformed_signature", "unexpected content in ds:Signature")
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
    if parent is security and target.tag == _WSSE_BST:
        return "BinarySecurityToken"
    if parent is parsed.header and target.tag != WSSE_SECURITY:
        qname = etree.QName(target)
        if qname.namespace != WSA_NS:
            return str(target.tag)  # an (explicitly allowed) custom header
        if parsed.wsa_headers.get(qname.localname) is target:
            return qname.localname
    raise _fail("signature_wrapping", "a reference points at an element out of place")


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
            raise _fail("reference_not_found", "a ds:Reference points at no element")
        part = _classify(target, parsed, security, timestamp)
        if part in seen:
            raise _fail("part_signed_twice", f"{part} is referenced more than once")
        seen.add(part)
        resolved.append((part, target, reference))
    required = {"Body", *parsed.wsa_headers}
    if timestamp is not None:
        required.add("Timestamp")
    missing = required - seen
    if missing:
        raise _fail("unsigned_part", "not signed: " + ", ".join(sorted(missing)))
    return resolved


def _load_certificate(der: bytes) -> tuple[x509.Certificate, rsa.RSAPublicKey | None]:
    certificate = x509.load_der_x509_certificate(der)
    key = certificate.public_key()
    return certificate, key if isinstance(key, rsa.RSAPublicKey) else None


def _signing_key(
    key_info: etree._Element, security: etree._Element, ids: Mapping[str, etree._Element]
) -> tuple[x509.Certificate, rsa.RSAPublicKey]:
    children = _children(key_info)
    if len(children) != 1 or children[0].tag != _WSSE_STR:
        raise _fail("unsupported_token_reference", "KeyInfo must hold one SecurityTokenReference")
    references = _children(children[0])
    if len(references) != 1 or references[0].tag != _WSSE_REFERENCE:
        raise _fail("unsupported_token_reference", "only a direct wsse:Reference is accepted")
    uri = references[0].get("URI") or ""
    value_type = references[0].get("ValueType")
    if not uri.startswith("#") or len(uri) < 2 or value_type not in (None, X509V3):
        raise _fail("unsupported_token_reference", "direct reference to an X509v3 token required")
    token = ids.get(uri[1:])
    if token is None:
        raise _fail("missing_token", "referenced BinarySecurityToken not found")
    if token.tag != _WSSE_BST or token.getparent() is not security:
        raise _fail("bad_token", "key reference does not point at a BinarySecurityToken")
    if token.get("ValueType") != X509V3 or token.get("EncodingType") not in (None, BASE64_BINARY):
        raise _fail("bad_token", "BinarySecurityToken is not a base64 X509v3 certificate")
    der = _b64decode(token.text, "bad_token", "BinarySecurityToken")
    try:
        certificate, key = _load_certificate(der)
    except (ValueError, UnsupportedAlgorithm):
        raise _fail("bad_token", "BinarySecurityToken is not a valid X.509 certificate") from None
    if key is None:
        raise _fail("unsupported_algorithm", "signing certificate does not hold an RSA key")
    if key.key_size < _MIN_RSA_BITS:
        raise _fail("weak_key", f"RSA key shorter than {_MIN_RSA_BITS} bits")
    return certificate, key


def _verify_signature_value(
    spec: _SignedInfoSpec, signature_value: etree._Element, key: rsa.RSAPublicKey
) -> None:
    value = _b64decode(signature_value.text, "malformed_signature", "ds:SignatureValue")
    try:
        key.verify(
            value,
            _c14n(spec.element, spec.prefixes),
            padding.PKCS1v15(),
            _CRYPTO_HASHES[spec.hash_name](),
        )
    except (InvalidSignature, ValueError):
        raise _fail("bad_signature", "SignatureValue does not verify") from None


def _verify_digests(resolved: list[tuple[str, etree._Element, _ReferenceSpec]]) -> None:
    for part, target, reference in resolved:
        actual = hashlib.new(reference.hash_name, _c14n(target, reference.prefixes)).digest()
        if not hmac.compare_digest(actual, reference.digest):
            raise _fail("digest_mismatch", f"digest of {part} does not match")


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
    moment = _utc(now)
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
