"""Signed WUS answers from a pre-canonicalised skeleton (issue 15 item 4).

The gateway's answers all have one shape: wsse:Security (Timestamp, the gateway's
BinarySecurityToken, one Signature), wsa:To (anonymous), MessageID, Action, RelatesTo,
and a Body holding the answer. :class:`ResponseSigner` writes that shape as text in which
every signed element already *is* its exclusive c14n form, so what is hashed is exactly
what is sent, and a verifier that canonicalises the parsed element gets the same bytes
back. Per answer only the Timestamp, MessageID, RelatesTo and Body digests, the SignedInfo
and the signature value are computed; the payload is serialised once. Everything else
(namespace declarations, the token, ids, the To and Action references) is fixed per
signer, algorithm and action.

The output is what :func:`digipoort.wus.wssign.sign_envelope` makes of
``build_envelope(...)`` up to namespace declarations and wsu:Id values: the same elements,
order, algorithms and references (``tests/test_response_signing.py`` checks both with our
verifier and with xmlsec1). A payload that itself uses the ``soapenv`` or ``wsu`` prefix
(none of ours) is signed the generic way.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from digipoort.wus.soap import (
    DS_NS,
    EXC_C14N_NS,
    SOAP11_NS,
    WSA_ANONYMOUS,
    WSA_NS,
    WSSE_NS,
    WSU_NS,
    build_envelope,
    new_message_id,
)
from digipoort.wus.wsprofile import (
    BASE64_BINARY,
    DIGEST_SHA1,
    DIGEST_SHA256,
    RSA_SHA1,
    RSA_SHA256,
    X509V3,
)
from digipoort.wus.wssign import sign_envelope

__all__ = ["ResponseSigner"]

_XML_DECLARATION: Final = b'<?xml version="1.0" encoding="UTF-8"?>\n'
_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})
_SUITES: Final = {
    "sha256": (RSA_SHA256, DIGEST_SHA256),
    "sha1": (RSA_SHA1, DIGEST_SHA1),
}
#: Prefixes the Body declares: a payload using them would be canonicalised differently
#: inside the Body than on its own.
_CLASHING: Final = (b"xmlns:soapenv=", b"xmlns:wsu=")


def _time(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond // 1000:03d}Z"


class _Suite:
    """What is fixed for one signer and one algorithm."""

    def __init__(self, algorithm: Literal["sha256", "sha1"], ids: str) -> None:
        signature_uri, digest_uri = _SUITES[algorithm]
        self.hash_name = algorithm
        self.hash: hashes.HashAlgorithm = (
            hashes.SHA256() if algorithm == "sha256" else hashes.SHA1()  # noqa: S303
        )
        self.signed_info_open = (
            f'<ds:SignedInfo xmlns:ds="{DS_NS}">'
            f'<ds:CanonicalizationMethod Algorithm="{EXC_C14N_NS}"></ds:CanonicalizationMethod>'
            f'<ds:SignatureMethod Algorithm="{signature_uri}"></ds:SignatureMethod>'
        )
        self.reference_head = (
            f'"><ds:Transforms><ds:Transform Algorithm="{EXC_C14N_NS}"></ds:Transform>'
            f'</ds:Transforms><ds:DigestMethod Algorithm="{digest_uri}"></ds:DigestMethod>'
            "<ds:DigestValue>"
        )
        self.ids = ids
        self.actions: dict[str, tuple[str, str]] = {}  # action -> (element, reference)
        to = self.wsa("To", WSA_ANONYMOUS)
        self.to = (to, self.reference(f"To-{ids}", to))

    def wsa(self, name: str, value: str) -> str:
        return (
            f'<wsa:{name} xmlns:wsa="{WSA_NS}" xmlns:wsu="{WSU_NS}" wsu:Id="{name}-{self.ids}">'
            f"{value.translate(_TEXT_ESCAPES)}</wsa:{name}>"
        )

    def reference(self, target_id: str, canonical: str | bytes) -> str:
        data = canonical.encode("utf-8") if isinstance(canonical, str) else canonical
        digest = base64.b64encode(hashlib.new(self.hash_name, data).digest()).decode("ascii")
        return (
            f'<ds:Reference URI="#{target_id}{self.reference_head}{digest}'
            "</ds:DigestValue></ds:Reference>"
        )

    def action(self, action: str) -> tuple[str, str]:
        found = self.actions.get(action)
        if found is None:
            element = self.wsa("Action", action)
            found = (element, self.reference(f"Action-{self.ids}", element))
            if len(self.actions) < 256:  # the operations' actions: a handful
                self.actions[action] = found
        return found


class ResponseSigner:
    """Signs the gateway's WUS answers with one key and certificate."""

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        certificate: x509.Certificate,
        *,
        timestamp_ttl: timedelta = timedelta(minutes=5),
    ) -> None:
        if not isinstance(private_key, rsa.RSAPrivateKey):
            raise TypeError("private_key must be an RSA private key")
        public = certificate.public_key()
        if (
            not isinstance(public, rsa.RSAPublicKey)
            or public.public_numbers() != private_key.public_key().public_numbers()
        ):
            raise ValueError("certificate does not match the private key")
        self._key = private_key
        self._certificate = certificate
        self._ttl = timestamp_ttl
        self._ids = uuid.uuid4().hex
        token = base64.b64encode(certificate.public_bytes(Encoding.DER)).decode("ascii")
        self._security_open = (
            f'<soapenv:Header><wsse:Security xmlns:wsse="{WSSE_NS}" soapenv:mustUnderstand="1">'
        )
        self._token_and_signature = (
            f'<wsse:BinarySecurityToken EncodingType="{BASE64_BINARY}" ValueType="{X509V3}"'
            f' wsu:Id="X509-{self._ids}">{token}</wsse:BinarySecurityToken>'
            f'<ds:Signature xmlns:ds="{DS_NS}">'
        )
        self._key_info = (
            "<ds:KeyInfo><wsse:SecurityTokenReference>"
            f'<wsse:Reference URI="#X509-{self._ids}" ValueType="{X509V3}"/>'
            "</wsse:SecurityTokenReference></ds:KeyInfo></ds:Signature></wsse:Security>"
        )
        self._envelope_open = (
            _XML_DECLARATION.decode("ascii")
            + f'<soapenv:Envelope xmlns:soapenv="{SOAP11_NS}" xmlns:wsa="{WSA_NS}"'
            f' xmlns:wsu="{WSU_NS}">'
        )
        self._body_open = (
            f'<soapenv:Body xmlns:soapenv="{SOAP11_NS}" xmlns:wsu="{WSU_NS}"'
            f' wsu:Id="Body-{self._ids}">'
        ).encode("ascii")
        self._suites = {name: _Suite(name, self._ids) for name in ("sha256", "sha1")}

    def sign(
        self,
        payload: etree._Element,
        *,
        action: str,
        relates_to: str | None,
        algorithm: Literal["sha256", "sha1"] = "sha256",
        now: datetime,
    ) -> bytes:
        """The signed answer (UTF-8, XML declaration) with ``payload`` as the Body."""
        canonical_payload = etree.tostring(
            payload, method="c14n", exclusive=True, with_comments=False
        )
        if relates_to == "" or any(c in canonical_payload for c in _CLASHING):
            return self._generic(payload, action, relates_to, algorithm, now)
        suite = self._suites[algorithm]
        ids = self._ids
        timestamp = (
            f'<wsu:Timestamp xmlns:wsu="{WSU_NS}" wsu:Id="TS-{ids}">'
            f"<wsu:Created>{_time(now)}</wsu:Created>"
            f"<wsu:Expires>{_time(now + self._ttl)}</wsu:Expires></wsu:Timestamp>"
        )
        message_id = suite.wsa("MessageID", new_message_id())
        action_element, action_reference = suite.action(action)
        to_element, to_reference = suite.to
        body = self._body_open + canonical_payload + b"</soapenv:Body>"
        headers = [to_element, message_id, action_element]
        references = [
            suite.reference(f"TS-{ids}", timestamp),
            to_reference,
            suite.reference(f"MessageID-{ids}", message_id),
            action_reference,
        ]
        if relates_to is not None:
            relates = suite.wsa("RelatesTo", relates_to)
            headers.append(relates)
            references.append(suite.reference(f"RelatesTo-{ids}", relates))
        references.append(suite.reference(f"Body-{ids}", body))
        signed_info = suite.signed_info_open + "".join(references) + "</ds:SignedInfo>"
        value = self._key.sign(signed_info.encode("utf-8"), padding.PKCS1v15(), suite.hash)
        head = "".join(
            (
                self._envelope_open,
                self._security_open,
                timestamp,
                self._token_and_signature,
                signed_info,
                "<ds:SignatureValue>",
                base64.b64encode(value).decode("ascii"),
                "</ds:SignatureValue>",
                self._key_info,
                *headers,
                "</soapenv:Header>",
            )
        )
        return head.encode("utf-8") + body + b"</soapenv:Envelope>"

    def _generic(
        self,
        payload: etree._Element,
        action: str,
        relates_to: str | None,
        algorithm: Literal["sha256", "sha1"],
        now: datetime,
    ) -> bytes:
        envelope = build_envelope(payload, action=action, to=WSA_ANONYMOUS, relates_to=relates_to)
        return sign_envelope(
            envelope,
            self._key,
            self._certificate,
            algorithm=algorithm,
            timestamp_ttl=self._ttl,
            now=now,
        )
