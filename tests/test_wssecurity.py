"""WS-Security (digipoort.wus.wssign, digipoort.wus.wsverify): signing, verification, every
refusal provoked by a concrete tampering, interoperability with xmlsec1 and the observed
Digipoort responses, and fuzzing. Exclusive c14n itself: tests/test_c14n.py."""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from digipoort.wus import wsprofile
from digipoort.wus.soap import (
    AANLEVERSERVICE_NS,
    DS_NS,
    EXC_C14N_NS,
    KOPPELVLAK_NS,
    SOAP11_NS,
    WSA_NS,
    WSSE_NS,
    WSU_NS,
    ParsedEnvelope,
    SoapError,
    build_envelope,
    parse_envelope,
)
from digipoort.wus.wsprofile import DIGEST_SHA1, RSA_SHA256, WSSecurityError
from digipoort.wus.wssign import sign_envelope
from digipoort.wus.wsverify import VerifiedSecurity, verify_envelope

OBSERVED = Path("/work/shared/specs/wus/observed")
needs_observed = pytest.mark.skipif(not OBSERVED.is_dir(), reason="observed messages missing")
XMLSEC1 = shutil.which("xmlsec1")
needs_xmlsec1 = pytest.mark.skipif(
    XMLSEC1 is None, reason="xmlsec1 not on PATH (apt-get install xmlsec1) - interop unproven"
)

NOW = datetime(2026, 3, 2, 9, 30, 15, 250000, tzinfo=UTC)
ACTION = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"
TO = "https://dgp.procesinfrastructuur.nl/wus/2.0/aanleverservice/1.2"
NS = {
    "s": SOAP11_NS,
    "wsa": WSA_NS,
    "wsse": WSSE_NS,
    "wsu": WSU_NS,
    "ds": DS_NS,
    "ec": EXC_C14N_NS,
    "kv": KOPPELVLAK_NS,
}
WSU_ID = f"{{{WSU_NS}}}Id"
BASIC_PARTS = {"Timestamp", "To", "MessageID", "Action", "Body"}


# --------------------------------------------------------------------------- keys


@dataclass(frozen=True)
class Keys:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    other_key: rsa.RSAPrivateKey
    other_cert: x509.Certificate


def _self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .sign(key, hashes.SHA256())
    )


@functools.cache
def _keys() -> Keys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Keys(key, _self_signed(key, "sender"), other, _self_signed(other, "someone else"))


@pytest.fixture(scope="module")
def keys() -> Keys:
    return _keys()


# --------------------------------------------------------------------------- helpers


def _payload() -> etree._Element:
    root = etree.Element(f"{{{KOPPELVLAK_NS}}}aanleverRequest", nsmap={None: KOPPELVLAK_NS})
    etree.SubElement(root, f"{{{KOPPELVLAK_NS}}}berichtsoort").text = "Omzetbelasting"
    etree.SubElement(root, f"{{{KOPPELVLAK_NS}}}aanleverkenmerk").text = "Happyflow"
    return root


def _envelope(**kwargs: object) -> etree._Element:
    return build_envelope(_payload(), action=ACTION, to=TO, **kwargs)  # type: ignore[arg-type]


def _signed(
    keys: Keys, *, algorithm: str = "sha256", now: datetime = NOW, **kwargs: object
) -> bytes:
    return sign_envelope(
        _envelope(**kwargs),
        keys.key,
        keys.cert,
        algorithm=algorithm,  # type: ignore[arg-type]
        now=now,
    )


def _verify(
    data: bytes, *, allow_unknown_headers: bool = False, **kwargs: object
) -> VerifiedSecurity:
    parsed = parse_envelope(data, allow_unknown_headers=allow_unknown_headers)
    kwargs.setdefault("now", NOW)
    return verify_envelope(parsed, **kwargs)  # type: ignore[arg-type]


def _code(data: bytes, **kwargs: object) -> str:
    with pytest.raises(WSSecurityError) as info:
        _verify(data, **kwargs)  # type: ignore[arg-type]
    return info.value.code


def _one(root: etree._Element, path: str) -> etree._Element:
    found = root.xpath(path, namespaces=NS)
    assert isinstance(found, list) and len(found) == 1, path
    element = found[0]
    assert isinstance(element, etree._Element)
    return element


def _c14n(element: etree._Element) -> bytes:
    """Test-side exclusive c14n, honouring the reference's PrefixList (no #default)."""
    return etree.tostring(element, method="c14n", exclusive=True, with_comments=False)


def _redigest(root: etree._Element) -> None:
    """Recompute every DigestValue (as a signer that signs the modified message would)."""
    for reference in root.iterfind(".//ds:SignedInfo/ds:Reference", NS):
        target_id = (reference.get("URI") or "#")[1:]
        found = root.xpath("//*[@wsu:Id=$i or @Id=$i]", namespaces=NS, i=target_id)
        if not isinstance(found, list) or len(found) != 1:
            continue
        target = found[0]
        assert isinstance(target, etree._Element)
        prefixes = reference.xpath(".//ec:InclusiveNamespaces/@PrefixList", namespaces=NS)
        canonical = etree.tostring(
            target,
            method="c14n",
            exclusive=True,
            with_comments=False,
            inclusive_ns_prefixes=str(prefixes[0]).split() if prefixes else None,  # type: ignore[index]
        )
        method = reference.find("ds:DigestMethod", NS)
        name = "sha1" if method is not None and method.get("Algorithm") == DIGEST_SHA1 else "sha256"
        value = reference.find("ds:DigestValue", NS)
        assert value is not None
        value.text = base64.b64encode(hashlib.new(name, canonical).digest()).decode()


def _resign(root: etree._Element, key: rsa.RSAPrivateKey) -> None:
    """Recompute the SignatureValue over the (modified) SignedInfo with ``key``."""
    signed_info = _one(root, "//ds:SignedInfo")
    method = _one(signed_info, "ds:SignatureMethod").get("Algorithm")
    legacy = hashes.SHA1()  # noqa: S303 - the published Digipoort profile is rsa-sha1
    digest: hashes.HashAlgorithm = hashes.SHA256() if method == RSA_SHA256 else legacy
    prefixes = signed_info.xpath(
        "ds:CanonicalizationMethod/ec:InclusiveNamespaces/@PrefixList", namespaces=NS
    )
    canonical = etree.tostring(
        signed_info,
        method="c14n",
        exclusive=True,
        with_comments=False,
        inclusive_ns_prefixes=str(prefixes[0]).split() if prefixes else None,  # type: ignore[index]
    )
    value = key.sign(canonical, padding.PKCS1v15(), digest)
    _one(root, "//ds:SignatureValue").text = base64.b64encode(value).decode()


Mutation = Callable[[etree._Element], None]


def _mutate(
    data: bytes,
    mutation: Mutation,
    *,
    key: rsa.RSAPrivateKey | None = None,
    redigest: bool = False,
) -> bytes:
    root = etree.fromstring(data)
    mutation(root)
    if redigest:
        _redigest(root)
    if key is not None:
        _resign(root, key)
    return etree.tostring(root)


def _reference_to(root: etree._Element, element: etree._Element) -> etree._Element:
    return _one(root, f"//ds:Reference[@URI='#{element.get(WSU_ID)}']")


def _remove(element: etree._Element) -> None:
    parent = element.getparent()
    assert parent is not None
    parent.remove(element)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    ("algorithm", "expected"), [("sha256", "rsa-sha256"), ("sha1", "rsa-sha1")]
)
def test_round_trip(keys: Keys, algorithm: str, expected: str) -> None:
    verified = _verify(_signed(keys, algorithm=algorithm))
    assert verified.signed_parts == BASIC_PARTS
    assert verified.algorithm == expected
    assert verified.digest_algorithms == {algorithm}
    assert verified.certificate == keys.cert
    assert verified.created == NOW.replace(microsecond=250000)
    assert verified.expires == verified.created + timedelta(minutes=5)


def test_round_trip_signs_every_addressing_header(keys: Keys) -> None:
    data = _signed(keys, relates_to="urn:uuid:req", reply_to_anonymous=True)
    assert _verify(data).signed_parts == BASIC_PARTS | {"RelatesTo", "ReplyTo"}


def test_signed_output_shape(keys: Keys) -> None:
    envelope = _envelope()
    before = etree.tostring(envelope)
    data = sign_envelope(
        envelope, keys.key, keys.cert, now=NOW, timestamp_ttl=timedelta(minutes=10)
    )
    assert etree.tostring(envelope) == before  # input untouched
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope')
    root = etree.fromstring(data)
    security = _one(root, "/s:Envelope/s:Header/*[1]")
    assert security.tag == f"{{{WSSE_NS}}}Security"
    assert security.get(f"{{{SOAP11_NS}}}mustUnderstand") == "1"
    assert _one(security, "wsu:Timestamp/wsu:Created").text == "2026-03-02T09:30:15.250Z"
    assert _one(security, "wsu:Timestamp/wsu:Expires").text == "2026-03-02T09:40:15.250Z"
    assert _one(security, "wsse:BinarySecurityToken").get("ValueType", "").endswith("#X509v3")
    references = root.xpath("//ds:Reference/@URI", namespaces=NS)
    assert isinstance(references, list) and len(references) == 5
    assert len(root.xpath("//ds:Signature", namespaces=NS)) == 1  # type: ignore[arg-type]
    str_ref = _one(root, "//ds:KeyInfo/wsse:SecurityTokenReference/wsse:Reference")
    assert str_ref.get("URI") == "#" + (
        _one(security, "wsse:BinarySecurityToken").get(WSU_ID) or ""
    )
    # Two signatures of the same envelope are independent.
    assert (
        _verify(sign_envelope(envelope, keys.key, keys.cert, now=NOW)).signed_parts == BASIC_PARTS
    )


def test_sign_refuses_misuse(keys: Keys) -> None:
    with pytest.raises(ValueError, match="does not match"):
        sign_envelope(_envelope(), keys.key, keys.other_cert)
    with pytest.raises(ValueError, match="algorithm"):
        sign_envelope(_envelope(), keys.key, keys.cert, algorithm="md5")  # type: ignore[arg-type]
    signed = etree.fromstring(_signed(keys))
    with pytest.raises(ValueError, match="already"):
        sign_envelope(signed, keys.key, keys.cert)
    with pytest.raises(ValueError, match="timezone"):
        sign_envelope(_envelope(), keys.key, keys.cert, now=datetime(2026, 1, 1))


def test_sha1_refused_when_not_allowed(keys: Keys) -> None:
    data = _signed(keys, algorithm="sha1")
    assert _code(data, allow_sha1=False) == "sha1_not_allowed"
    assert _verify(_signed(keys), allow_sha1=False).algorithm == "rsa-sha256"


def test_sha1_digest_under_rsa_sha256_refused_when_not_allowed(keys: Keys) -> None:
    def sha1_digests(root: etree._Element) -> None:
        for method in root.iterfind(".//ds:DigestMethod", NS):
            method.set("Algorithm", DIGEST_SHA1)

    data = _mutate(_signed(keys), sha1_digests, key=keys.key, redigest=True)
    assert _verify(data).digest_algorithms == {"sha1"}
    assert _code(data, allow_sha1=False) == "sha1_not_allowed"


# --------------------------------------------------------------------------- observed


@needs_observed
@pytest.mark.parametrize(
    ("name", "created"),
    [
        ("valid-deliver-response.xml", datetime(2021, 3, 7, 11, 37, 39, 708000, tzinfo=UTC)),
        ("valid-newstatus-response.xml", datetime(2021, 3, 10, 12, 46, 42, 153000, tzinfo=UTC)),
    ],
)
def test_observed_digipoort_responses_verify(name: str, created: datetime) -> None:
    data = (OBSERVED / name).read_bytes()
    verified = _verify(data, now=created + timedelta(minutes=1))
    assert verified.algorithm == "rsa-sha1"
    assert verified.signed_parts == {"Timestamp", "To", "MessageID", "Action", "RelatesTo", "Body"}
    assert verified.created == created
    assert verified.expires == created + timedelta(minutes=10)
    common_name = verified.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert common_name[0].value == "cs-bedrijven.procesinfrastructuur.nl"
    assert _code(data, now=created + timedelta(minutes=1), allow_sha1=False) == "sha1_not_allowed"
    assert _code(data, now=NOW) == "timestamp_expired"


@needs_observed
def test_observed_tampered_response_fails() -> None:
    data = (OBSERVED / "tampered-deliver-response.xml").read_bytes()
    now = datetime(2021, 3, 7, 11, 38, tzinfo=UTC)
    with pytest.raises(WSSecurityError) as info:
        _verify(data, now=now)
    assert info.value.code == "digest_mismatch"
    assert "Body" in info.value.message


# --------------------------------------------------------------------------- tampering


def _set_text(path: str, text: str) -> Mutation:
    def mutation(root: etree._Element) -> None:
        _one(root, path).text = text

    return mutation


def _flip_base64(path: str) -> Mutation:
    def mutation(root: etree._Element) -> None:
        element = _one(root, path)
        raw = bytearray(base64.b64decode(element.text or ""))
        raw[len(raw) // 2] ^= 0x01
        element.text = base64.b64encode(bytes(raw)).decode()

    return mutation


def _other_token(root: etree._Element) -> None:
    _one(root, "//wsse:BinarySecurityToken").text = base64.b64encode(
        _keys().other_cert.public_bytes(Encoding.DER)
    ).decode()


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        (_set_text("//kv:berichtsoort", "Loonaangifte"), "digest_mismatch"),
        (lambda r: _one(r, "//kv:berichtsoort").set("extra", "1"), "digest_mismatch"),
        (_set_text("//wsa:To", "https://evil.example/"), "digest_mismatch"),
        (_set_text("//wsa:Action", ACTION.replace("aanleveren", "x")), "digest_mismatch"),
        (_set_text("//wsa:MessageID", "urn:uuid:replayed"), "digest_mismatch"),
        (_set_text("//wsu:Created", "2026-03-02T09:30:16.000Z"), "digest_mismatch"),
        (_flip_base64("//ds:Reference[1]/ds:DigestValue"), "bad_signature"),
        (_flip_base64("//ds:SignatureValue"), "bad_signature"),
        (_other_token, "bad_signature"),
    ],
    ids=[
        "body-text",
        "body-attribute",
        "to",
        "action",
        "messageid",
        "timestamp",
        "signedinfo",
        "signaturevalue",
        "key-not-the-bst",
    ],
)
def test_tampering_detected(keys: Keys, mutation: Mutation, code: str) -> None:
    assert _code(_mutate(_signed(keys), mutation)) == code


def test_signature_by_other_key_than_bst(keys: Keys) -> None:
    # Signed correctly, but with a key that does not belong to the embedded certificate.
    data = _mutate(_signed(keys), lambda r: None, key=keys.other_key)
    assert _code(data) == "bad_signature"


def _wrap_body_in_security(root: etree._Element) -> None:
    """Classic XSW: the signed Body hides in the Security header, an evil Body takes its place."""
    body = _one(root, "/s:Envelope/s:Body")
    evil = etree.Element(f"{{{SOAP11_NS}}}Body")
    payload = copy.deepcopy(body[0])
    payload[0].text = "Evil"
    evil.append(payload)
    root.replace(body, evil)
    wrapper = etree.SubElement(_one(root, "//wsse:Security"), "{urn:attacker}Wrapper")
    wrapper.append(body)


def _wrap_body_in_header(root: etree._Element) -> None:
    body = _one(root, "/s:Envelope/s:Body")
    evil = copy.deepcopy(body)
    del evil.attrib[WSU_ID]
    evil[0][0].text = "Evil"
    root.replace(body, evil)
    wrapper = etree.SubElement(_one(root, "/s:Envelope/s:Header"), "{urn:attacker}Wrapper")
    wrapper.append(body)


def _wrap_to_in_security(root: etree._Element) -> None:
    to = _one(root, "//wsa:To")
    evil = etree.Element(f"{{{WSA_NS}}}To")
    evil.text = "https://evil.example/"
    to.addnext(evil)
    etree.SubElement(_one(root, "//wsse:Security"), "{urn:attacker}Wrapper").append(to)


def test_wrapping_second_body_in_security(keys: Keys) -> None:
    assert _code(_mutate(_signed(keys), _wrap_body_in_security)) == "signature_wrapping"


def test_wrapping_second_body_in_custom_header(keys: Keys) -> None:
    data = _mutate(_signed(keys), _wrap_body_in_header)
    with pytest.raises(SoapError) as info:
        parse_envelope(data)
    assert info.value.code == "unknown_header"
    assert _code(data, allow_unknown_headers=True) == "signature_wrapping"


def test_wrapping_addressing_header(keys: Keys) -> None:
    assert _code(_mutate(_signed(keys), _wrap_to_in_security)) == "signature_wrapping"


def test_reference_into_the_body_refused(keys: Keys) -> None:
    def point_into_payload(root: etree._Element) -> None:
        inner = _one(root, "//kv:berichtsoort")
        inner.set(WSU_ID, "inner")
        _reference_to(root, _one(root, "//s:Body")).set("URI", "#inner")

    data = _mutate(_signed(keys), point_into_payload, key=keys.key, redigest=True)
    assert _code(data) == "signature_wrapping"


def test_duplicate_ids(keys: Keys) -> None:
    def duplicate_wsu_id(root: etree._Element) -> None:
        body_id = _one(root, "//s:Body").get(WSU_ID) or ""
        _one(root, "//kv:berichtsoort").set(WSU_ID, body_id)

    def duplicate_plain_id(root: etree._Element) -> None:
        _one(root, "//kv:aanleverkenmerk").set("Id", _one(root, "//wsa:To").get(WSU_ID) or "")

    assert _code(_mutate(_signed(keys), duplicate_wsu_id)) == "duplicate_id"
    assert _code(_mutate(_signed(keys), duplicate_plain_id)) == "duplicate_id"


@pytest.mark.parametrize("part", ["wsa:Action", "wsa:To", "wsa:MessageID", "s:Body"])
def test_unsigned_part(keys: Keys, part: str) -> None:
    def drop_reference(root: etree._Element) -> None:
        _remove(_reference_to(root, _one(root, f"//{part}")))

    data = _mutate(_signed(keys), drop_reference, key=keys.key)
    assert _code(data) == "unsigned_part"


def test_unsigned_relates_to(keys: Keys) -> None:
    def drop_reference(root: etree._Element) -> None:
        _remove(_reference_to(root, _one(root, "//wsa:RelatesTo")))

    data = _mutate(_signed(keys, relates_to="urn:uuid:x"), drop_reference, key=keys.key)
    assert _code(data) == "unsigned_part"


def test_unsigned_timestamp(keys: Keys) -> None:
    def drop_reference(root: etree._Element) -> None:
        _remove(_reference_to(root, _one(root, "//wsu:Timestamp")))

    assert _code(_mutate(_signed(keys), drop_reference, key=keys.key)) == "unsigned_part"


def test_missing_timestamp(keys: Keys) -> None:
    def drop_timestamp(root: etree._Element) -> None:
        timestamp = _one(root, "//wsu:Timestamp")
        _remove(_reference_to(root, timestamp))
        _remove(timestamp)

    data = _mutate(_signed(keys), drop_timestamp, key=keys.key)
    assert _code(data) == "missing_timestamp"
    verified = _verify(data, require_timestamp=False)
    assert verified.created is None and verified.expires is None
    assert verified.signed_parts == BASIC_PARTS - {"Timestamp"}


def test_stale_and_future_timestamps(keys: Keys) -> None:
    assert _code(_signed(keys, now=NOW - timedelta(hours=1))) == "timestamp_expired"
    assert _code(_signed(keys, now=NOW - timedelta(minutes=5, seconds=1))) == "timestamp_expired"
    assert _code(_signed(keys, now=NOW + timedelta(hours=1))) == "timestamp_in_future"
    assert _code(_signed(keys, now=NOW + timedelta(minutes=5, seconds=1))) == "timestamp_in_future"
    # Within the allowed clock skew either way.
    assert _verify(_signed(keys, now=NOW - timedelta(minutes=4))).created is not None
    assert _verify(_signed(keys, now=NOW + timedelta(minutes=4))).created is not None
    narrow = {"max_clock_skew": timedelta(seconds=30)}
    assert _code(_signed(keys, now=NOW - timedelta(minutes=1)), **narrow) == "timestamp_expired"


def test_expired_by_expires(keys: Keys) -> None:
    data = sign_envelope(
        _envelope(), keys.key, keys.cert, now=NOW - timedelta(minutes=4), timestamp_ttl=timedelta(0)
    )
    assert _code(
        data, max_clock_skew=timedelta(minutes=4, seconds=30), now=NOW + timedelta(minutes=1)
    ) == ("timestamp_expired")


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        (_set_text("//wsu:Created", "2026-03-02T09:30:15"), "bad_timestamp"),
        (_set_text("//wsu:Created", "yesterday"), "bad_timestamp"),
        (_set_text("//wsu:Created", "2026-02-30T09:30:15Z"), "bad_timestamp"),
        (_set_text("//wsu:Expires", "2026-03-02T09:00:00Z"), "bad_timestamp"),
        (lambda r: _remove(_one(r, "//wsu:Created")), "bad_timestamp"),
    ],
    ids=["no-zone", "garbage", "feb-30", "expires-before-created", "no-created"],
)
def test_bad_timestamp(keys: Keys, mutation: Mutation, code: str) -> None:
    assert _code(_mutate(_signed(keys), mutation, key=keys.key, redigest=True)) == code


def test_timestamp_with_offset_and_long_fraction(keys: Keys) -> None:
    data = _mutate(
        _signed(keys),
        _set_text("//wsu:Created", "2026-03-02T10:30:15.2500000+01:00"),
        key=keys.key,
        redigest=True,
    )
    assert _verify(data).created == datetime(2026, 3, 2, 9, 30, 15, 250000, tzinfo=UTC)


def _duplicate(path: str) -> Mutation:
    def mutation(root: etree._Element) -> None:
        element = _one(root, path)
        element.addnext(copy.deepcopy(element))

    return mutation


def _set_attr(path: str, name: str, value: str) -> Mutation:
    def mutation(root: etree._Element) -> None:
        _one(root, path).set(name, value)

    return mutation


def _replace_transform(algorithm: str, extra: int = 0) -> Mutation:
    def mutation(root: etree._Element) -> None:
        transforms = _one(root, "//ds:Reference[1]/ds:Transforms")
        _one(transforms, "ds:Transform").set("Algorithm", algorithm)
        for _ in range(extra):
            etree.SubElement(transforms, f"{{{DS_NS}}}Transform", Algorithm=EXC_C14N_NS)

    return mutation


def _drop_transforms(root: etree._Element) -> None:
    _remove(_one(root, "//ds:Reference[1]/ds:Transforms"))


def _key_identifier(root: etree._Element) -> None:
    str_element = _one(root, "//wsse:SecurityTokenReference")
    str_element.clear()
    etree.SubElement(str_element, f"{{{WSSE_NS}}}KeyIdentifier").text = "AAAA"


def _add_object(root: etree._Element) -> None:
    etree.SubElement(_one(root, "//ds:Signature"), f"{{{DS_NS}}}Object")


def _two_security_headers(root: etree._Element) -> None:
    security = _one(root, "//wsse:Security")
    twin = copy.deepcopy(security)
    for element in twin.iter():
        if element.get(WSU_ID):
            element.set(WSU_ID, "twin-" + (element.get(WSU_ID) or ""))
    security.addnext(twin)


@pytest.mark.parametrize(
    ("mutation", "code"),
    [
        (lambda r: _remove(_one(r, "//wsse:Security")), "missing_security"),
        (_two_security_headers, "multiple_security"),
        (lambda r: _remove(_one(r, "//ds:Signature")), "missing_signature"),
        (_duplicate("//ds:Signature"), "multiple_signatures"),
        (_duplicate("//ds:SignedInfo/ds:Reference[2]"), "part_signed_twice"),
        (_set_attr("//ds:Reference[2]", "URI", "#nope"), "reference_not_found"),
        (_set_attr("//ds:Reference[2]", "URI", ""), "bad_reference"),
        (_set_attr("//ds:Reference[2]", "URI", "http://evil.example/x.xml"), "bad_reference"),
        (_set_attr("//ds:Reference[2]", "URI", "#xpointer(/)"), "bad_reference"),
        (
            _replace_transform("http://www.w3.org/2000/09/xmldsig#enveloped-signature"),
            "unsupported_transform",
        ),
        (
            _replace_transform("http://www.w3.org/TR/1999/REC-xpath-19991116"),
            "unsupported_transform",
        ),
        (_replace_transform(EXC_C14N_NS + "WithComments"), "unsupported_transform"),
        (_replace_transform(EXC_C14N_NS, extra=1), "unsupported_transform"),
        (_drop_transforms, "unsupported_transform"),
        (
            _set_attr(
                "//ds:SignatureMethod", "Algorithm", "http://www.w3.org/2000/09/xmldsig#hmac-sha1"
            ),
            "unsupported_algorithm",
        ),
        (
            _set_attr(
                "//ds:Reference[1]/ds:DigestMethod",
                "Algorithm",
                "http://www.w3.org/2001/04/xmldsig-more#md5",
            ),
            "unsupported_algorithm",
        ),
        (
            _set_attr(
                "//ds:CanonicalizationMethod",
                "Algorithm",
                "http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
            ),
            "unsupported_algorithm",
        ),
        (
            _set_attr("//wsse:SecurityTokenReference/wsse:Reference", "URI", "#nope"),
            "missing_token",
        ),
        (lambda r: _remove(_one(r, "//ds:KeyInfo")), "missing_token"),
        (_key_identifier, "unsupported_token_reference"),
        (
            lambda r: _one(r, "//wsse:SecurityTokenReference/wsse:Reference").set(
                "URI", "#" + (_one(r, "//wsu:Timestamp").get(WSU_ID) or "")
            ),
            "bad_token",
        ),
        (_set_text("//wsse:BinarySecurityToken", "bm90IGEgY2VydGlmaWNhdGU="), "bad_token"),
        (_set_text("//wsse:BinarySecurityToken", "!!!"), "bad_token"),
        (_set_attr("//wsse:BinarySecurityToken", "ValueType", "urn:other"), "bad_token"),
        (_add_object, "malformed_signature"),
        (_set_text("//ds:Reference[1]/ds:DigestValue", "not base64!"), "malformed_signature"),
        (_set_text("//ds:Reference[1]/ds:DigestValue", "AAAA"), "malformed_signature"),
    ],
)
def test_refusals(keys: Keys, mutation: Mutation, code: str) -> None:
    # Re-signed so that each refusal is for its own reason, not a broken signature.
    data = _mutate(_signed(keys), mutation)
    if len(etree.fromstring(data).findall(".//ds:SignedInfo", NS)) == 1:
        data = _mutate(data, lambda r: None, key=keys.key)
    assert _code(data) == code


def test_weak_key_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    data = sign_envelope(_envelope(), weak, _self_signed(weak, "weak"), now=NOW)
    assert _code(data) == "weak_key"


def test_inclusive_namespaces_prefix_list(keys: Keys) -> None:
    """What CXF/WSS4J emit: InclusiveNamespaces PrefixList in every transform and in
    the CanonicalizationMethod, naming prefixes declared on ancestors."""

    def add_prefix_lists(root: etree._Element) -> None:
        methods = [
            *root.iterfind(".//ds:Transform", NS),
            _one(root, "//ds:CanonicalizationMethod"),
        ]
        for method in methods:
            etree.SubElement(
                method,
                f"{{{EXC_C14N_NS}}}InclusiveNamespaces",
                PrefixList="soapenv wsa wsu",
                nsmap={"ec": EXC_C14N_NS},
            )

    data = _mutate(_signed(keys), add_prefix_lists, key=keys.key, redigest=True)
    assert _verify(data).signed_parts == BASIC_PARTS
    # And the prefix list is honoured (not ignored): dropping it breaks the digests.
    stripped = _mutate(
        data,
        lambda r: [_remove(e) for e in r.findall(".//ds:Transform/ec:InclusiveNamespaces", NS)],
    )
    assert _code(stripped) in {"digest_mismatch", "bad_signature"}


# --------------------------------------------------------------------------- xmlsec1

ID_ARGS = [
    arg
    for name in ("Body", "Timestamp", "To", "MessageID", "Action", "RelatesTo", "ReplyTo")
    for arg in ("--id-attr:Id", name)
]


def _xmlsec1(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert XMLSEC1 is not None
    return subprocess.run(
        [XMLSEC1, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture(scope="module")
def pem_files(keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    directory = tmp_path_factory.mktemp("xmlsec")
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    cert.write_bytes(keys.cert.public_bytes(Encoding.PEM))
    key.write_bytes(keys.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    return cert, key


@needs_xmlsec1
@pytest.mark.parametrize("algorithm", ["sha256", "sha1"])
def test_xmlsec1_verifies_our_signature(
    keys: Keys, pem_files: tuple[Path, Path], tmp_path: Path, algorithm: str
) -> None:
    cert, _key = pem_files
    signed = tmp_path / "signed.xml"
    signed.write_bytes(
        _signed(keys, algorithm=algorithm, relates_to="urn:uuid:r", reply_to_anonymous=True)
    )
    result = _xmlsec1("--verify", "--pubkey-cert-pem", cert, *ID_ARGS, signed)
    assert result.returncode == 0, result.stderr
    assert "SignedInfo References (ok/all): 7/7" in result.stderr

    tampered = tmp_path / "tampered.xml"
    tampered.write_bytes(signed.read_bytes().replace(b"Omzetbelasting", b"Omzetbelastinx"))
    result = _xmlsec1("--verify", "--pubkey-cert-pem", cert, *ID_ARGS, tampered)
    assert result.returncode != 0


def _xmlsec1_template(keys: Keys) -> str:
    """A WSS4J-style message with PrefixLists (including '#default') for xmlsec1 to sign."""

    def reference(target: str, prefixes: str) -> str:
        return (
            f'<ds:Reference URI="#{target}"><ds:Transforms>'
            f'<ds:Transform Algorithm="{EXC_C14N_NS}">'
            f'<ec:InclusiveNamespaces xmlns:ec="{EXC_C14N_NS}" PrefixList="{prefixes}"/>'
            "</ds:Transform></ds:Transforms>"
            '<ds:DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/>'
            "<ds:DigestValue/></ds:Reference>"
        )

    token = base64.b64encode(keys.cert.public_bytes(Encoding.DER)).decode()
    return (
        f'<soap:Envelope xmlns:soap="{SOAP11_NS}" xmlns="urn:default-on-envelope" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:wsu="{WSU_NS}">'
        f'<soap:Header><wsse:Security xmlns:wsse="{WSSE_NS}" soap:mustUnderstand="1">'
        '<wsu:Timestamp wsu:Id="TS-1"><wsu:Created>2026-03-02T09:30:00Z</wsu:Created>'
        "<wsu:Expires>2026-03-02T09:40:00Z</wsu:Expires></wsu:Timestamp>"
        f'<wsse:BinarySecurityToken EncodingType="{wsprofile.BASE64_BINARY}" '
        f'ValueType="{wsprofile.X509V3}" wsu:Id="X509-1">{token}</wsse:BinarySecurityToken>'
        f'<ds:Signature xmlns:ds="{DS_NS}"><ds:SignedInfo>'
        f'<ds:CanonicalizationMethod Algorithm="{EXC_C14N_NS}">'
        f'<ec:InclusiveNamespaces xmlns:ec="{EXC_C14N_NS}" PrefixList="soap #default"/>'
        "</ds:CanonicalizationMethod>"
        '<ds:SignatureMethod Algorithm="http://www.w3.org/2000/09/xmldsig#rsa-sha1"/>'
        + reference("TS-1", "wsse soap #default")
        + reference("id-to", "soap xsd")
        + reference("id-action", "#default soap")
        + reference("id-mid", "soap")
        + reference("id-body", "xsd #default")
        + "</ds:SignedInfo><ds:SignatureValue/><ds:KeyInfo><wsse:SecurityTokenReference>"
        f'<wsse:Reference URI="#X509-1" ValueType="{wsprofile.X509V3}"/>'
        "</wsse:SecurityTokenReference></ds:KeyInfo></ds:Signature></wsse:Security>"
        f'<wsa:To xmlns:wsa="{WSA_NS}" wsu:Id="id-to">{TO}</wsa:To>'
        f'<Action xmlns="{WSA_NS}" wsu:Id="id-action">{ACTION}</Action>'
        f'<wsa:MessageID xmlns:wsa="{WSA_NS}" wsu:Id="id-mid">urn:uuid:1</wsa:MessageID>'
        '</soap:Header><soap:Body wsu:Id="id-body">'
        f'<kv:aanleverRequest xmlns:kv="{KOPPELVLAK_NS}">'
        '<kv:berichtsoort xsi:type="xsd:string">Omzetbelasting</kv:berichtsoort>'
        '<b xmlns="urn:other"><p:c xmlns:p="urn:p" xmlns="urn:unused"/></b>'
        '<kv:aanleverkenmerk xmlns="">x<!-- comment --></kv:aanleverkenmerk>'
        "</kv:aanleverRequest></soap:Body></soap:Envelope>"
    )


@needs_xmlsec1
def test_we_verify_xmlsec1_signature_with_prefix_lists(
    keys: Keys, pem_files: tuple[Path, Path], tmp_path: Path
) -> None:
    _cert, key = pem_files
    template = tmp_path / "template.xml"
    template.write_text(_xmlsec1_template(keys))
    signed = tmp_path / "signed.xml"
    result = _xmlsec1("--sign", "--privkey-pem", key, *ID_ARGS, "--output", signed, template)
    assert result.returncode == 0, result.stderr
    data = signed.read_bytes()
    verified = _verify(data)
    assert verified.signed_parts == BASIC_PARTS
    assert verified.algorithm == "rsa-sha1"
    tampered = data.replace(b"Omzetbelasting", b"Omzetbelastinx")
    assert _code(tampered) == "digest_mismatch"


# --------------------------------------------------------------------------- fuzzing


@functools.cache
def _fuzz_target() -> tuple[bytes, ParsedEnvelope]:
    data = _signed(_keys(), relates_to="urn:uuid:r", reply_to_anonymous=True)
    return data, parse_envelope(data)


def _c14n_of_signed_parts(parsed: ParsedEnvelope) -> tuple[bytes, ...]:
    return (_c14n(parsed.body), *(_c14n(h) for _n, h in sorted(parsed.wsa_headers.items())))


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    edits=st.lists(
        st.tuples(
            st.sampled_from(["replace", "delete", "insert"]),
            st.floats(min_value=0, max_value=1, exclude_max=True),
            st.sampled_from(list(b"<>/=\"' &;:#x0aZ\x00\xff") + list(range(256))),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzzed_envelopes_never_crash_or_pass_altered(edits: list[tuple[str, float, int]]) -> None:
    original, original_parsed = _fuzz_target()
    data = bytearray(original)
    for kind, where, byte in edits:
        position = int(where * len(data))
        if kind == "replace":
            data[position] = byte
        elif kind == "delete":
            del data[position]
        else:
            data.insert(position, byte)
    try:
        parsed = parse_envelope(bytes(data))
        verify_envelope(parsed, now=NOW)
    except (SoapError, WSSecurityError):
        return
    # Accepted: then everything that was signed must be exactly what was signed.
    assert _c14n_of_signed_parts(parsed) == _c14n_of_signed_parts(original_parsed)
