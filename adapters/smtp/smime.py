"""S/MIME (``multipart/signed``, detached ``application/pkcs7-signature``): verify the
CMS SignedData signature over the exact signed bytes. Pure (no I/O): asn1crypto parses the
CMS structure, ``cryptography`` checks digests and signatures. The signer certificate is
then validated by the gateway's :class:`~digipoort.pki.CertificateVerifier` like the TLS
client certificate (see :mod:`adapters.smtp.server`).

Supported: one SignerInfo; digest SHA-256/384/512 (SHA-1 is refused); RSA PKCS#1 v1.5,
RSA-PSS and ECDSA signatures; with or without signed attributes (with them, the
messageDigest and contentType attributes are checked).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from asn1crypto import cms
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from digipoort.pki.cmssigner import find_signer

__all__ = ["SmimeInvalid", "SmimeSigner", "verify_detached"]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class SmimeInvalid(Exception):
    """The signature does not verify or the structure is not acceptable."""


@dataclass(frozen=True)
class SmimeSigner:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # the other certificates in the SignedData
    digest_algorithm: str


def _digest(name: str, data: bytes) -> bytes:
    h = hashes.Hash(_HASHES[name]())
    h.update(data)
    return h.finalize()


def verify_detached(signed_bytes: bytes, signature_der: bytes) -> SmimeSigner:
    """Verify a detached CMS signature; return the signer (certificate not yet validated)."""
    try:
        info = cms.ContentInfo.load(signature_der, strict=True)
        if info["content_type"].native != "signed_data":
            raise SmimeInvalid("not a CMS SignedData")
        sd = info["content"]
        signer_infos = list(sd["signer_infos"])
        if len(signer_infos) != 1:
            raise SmimeInvalid(f"{len(signer_infos)} signers; exactly one expected")
        si = signer_infos[0]
        certs = [
            x509.load_der_x509_certificate(c.chosen.dump())
            for c in (sd["certificates"] or [])
            if c.name == "certificate"
        ]
        signer = find_signer(si["sid"], certs)
        if signer is None:
            raise SmimeInvalid("signer certificate not included in the signature")
        digest_name = si["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            raise SmimeInvalid(f"digest algorithm {digest_name} not accepted")
        encap = sd["encap_content_info"]["content"]
        if encap.native is not None and encap.native != b"":
            raise SmimeInvalid("not a detached signature")
        attrs = si["signed_attrs"]
        if attrs.native:
            _check_attributes(attrs, _digest(digest_name, signed_bytes))
            to_verify = b"\x31" + attrs.dump()[1:]  # the DER SET OF, not the [0] tag
        else:
            to_verify = signed_bytes
        _verify_signature(signer, si, digest_name, to_verify)
    except SmimeInvalid:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise SmimeInvalid("malformed signature") from None
    chain = tuple(c for c in certs if c is not signer)
    return SmimeSigner(signer, chain, digest_name)


def _check_attributes(attrs: cms.CMSAttributes, digest: bytes) -> None:
    found: dict[str, object] = {}
    for attr in attrs:
        name = attr["type"].native
        values = attr["values"]
        if name in found or len(values) != 1:
            raise SmimeInvalid(f"signed attribute {name} repeated")
        found[name] = values[0].native
    if found.get("content_type") != "data":
        raise SmimeInvalid("contentType attribute is not id-data")
    md = found.get("message_digest")
    if not isinstance(md, bytes) or not hmac.compare_digest(md, digest):
        raise SmimeInvalid("message digest does not match the signed content")


def _verify_signature(
    cert: x509.Certificate, si: cms.SignerInfo, digest_name: str, data: bytes
) -> None:
    algo = si["signature_algorithm"]
    kind = algo.signature_algo
    signature = si["signature"].native
    key = cert.public_key()
    try:
        if kind == "rsassa_pkcs1v15" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), _HASHES[digest_name]())
        elif kind == "rsassa_pss" and isinstance(key, rsa.RSAPublicKey):
            params = algo["parameters"]
            pss_hash = params["hash_algorithm"]["algorithm"].native
            if pss_hash not in _HASHES:
                raise SmimeInvalid(f"PSS hash {pss_hash} not accepted")
            h = _HASHES[pss_hash]()
            key.verify(
                signature,
                data,
                padding.PSS(mgf=padding.MGF1(h), salt_length=params["salt_length"].native),
                h,
            )
        elif kind == "ecdsa" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_HASHES[digest_name]()))
        else:
            raise SmimeInvalid(f"signature algorithm {kind} not supported for this key")
    except InvalidSignature:
        raise SmimeInvalid("signature does not verify") from None
