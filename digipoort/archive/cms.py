"""Detached CMS (PKCS#7) signatures over a day's manifest: signed with the gateway's key
(``pki.key_file``/``cert_file``), with the signingTime attribute; verified here with
asn1crypto + cryptography (the same approach as the S/MIME check of the SMTP adapter,
which the core cannot import)."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key, pkcs7

from digipoort.pki.cmssigner import find_signer

__all__ = ["SignatureInvalid", "Signed", "load_identity", "sign_detached", "verify_detached"]


class SignatureInvalid(Exception):
    pass


@dataclass(frozen=True)
class Signed:
    signer: x509.Certificate
    signing_time: datetime | None
    certificates: tuple[x509.Certificate, ...]


def load_identity(
    cert_file: Path, key_file: Path
) -> tuple[rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, list[x509.Certificate]]:
    certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
    key = load_pem_private_key(key_file.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_file}: the gateway key must be RSA or EC")
    return key, certs


def sign_detached(
    data: bytes,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    certs: list[x509.Certificate],
) -> bytes:
    """DER SignedData without content, signed attributes incl. signingTime (now)."""
    builder = (
        pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(certs[0], key, hashes.SHA256())
    )
    for extra in certs[1:]:
        builder = builder.add_certificate(extra)
    options = [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary]
    return builder.sign(Encoding.DER, options)


def verify_detached(data: bytes, signature_der: bytes, *, content_type: str = "data") -> Signed:
    """Check the signature over ``data``; return the signer (its trust is the caller's).
    ``content_type``: the contentType signed attribute expected (``tst_info`` for an RFC
    3161 token)."""
    try:
        info = cms.ContentInfo.load(signature_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SignatureInvalid("not a CMS SignedData")
        sd = info["content"]
        if sd["encap_content_info"]["content"].native not in (None, b""):
            raise SignatureInvalid("not a detached signature")
        signer_infos = list(sd["signer_infos"])
        if len(signer_infos) != 1:
            raise SignatureInvalid("exactly one signer expected")
        si = signer_infos[0]
        certs = tuple(
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in (sd["certificates"] or [])
            if c.name == "certificate"
        )
        signer = find_signer(si["sid"], certs)
        if signer is None:
            raise SignatureInvalid("signer certificate not in the signature")
        if si["digest_algorithm"]["algorithm"].native != "sha256":
            raise SignatureInvalid("digest algorithm is not SHA-256")
        attrs = si["signed_attrs"]
        found: dict[str, object] = {}
        for attr in attrs:
            found[attr["type"].native] = attr["values"][0].native
        digest = found.get("message_digest")
        if not isinstance(digest, bytes) or not hmac.compare_digest(
            digest, hashlib.sha256(data).digest()
        ):
            raise SignatureInvalid("the manifest does not match the signed digest")
        if found.get("content_type") != content_type:
            raise SignatureInvalid(f"contentType is not {content_type}")
        signed = b"\x31" + attrs.dump()[1:]  # DER SET OF, not the [0] IMPLICIT tag
        _check(signer, si, signed)
        when = found.get("signing_time")
        return Signed(signer, when if isinstance(when, datetime) else None, certs)
    except SignatureInvalid:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise SignatureInvalid("malformed signature") from None


def _check(cert: x509.Certificate, si: cms.SignerInfo, data: bytes) -> None:
    kind = si["signature_algorithm"].signature_algo
    signature = si["signature"].native
    key = cert.public_key()
    try:
        if kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            raise SignatureInvalid(f"signature algorithm {kind} not accepted")
    except InvalidSignature:
        raise SignatureInvalid("signature does not verify") from None
