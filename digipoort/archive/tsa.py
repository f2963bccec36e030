"""RFC 3161 time-stamps for the day's manifest signature (``archive.tsa_url``).

:func:`request_token` asks the TSA for a token over SHA-256 of ``MANIFEST.p7s`` (so the
time-stamp covers the manifest and its signature), :func:`verify_token` checks a stored
token: status, the message imprint, and the token's CMS signature (messageDigest over the
TSTInfo, the signer's signature over the signed attributes); ``archive verify`` then
checks the TSA's certificate against ``archive.tsa_ca_file`` when that is set.

:func:`issue_token` is a minimal TSA (for development and tests): it answers a request
with a token signed by the given key and certificate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import urllib.request
from datetime import UTC, datetime

from asn1crypto import cms, tsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from digipoort.archive.cms import SignatureInvalid, verify_detached
from digipoort.config import Settings

__all__ = ["TimestampInvalid", "issue_token", "request_token", "verify_token"]

#: A time-stamp response is small.
MAX_RESPONSE = 256 * 1024


class TimestampInvalid(Exception):
    pass


def build_request(data: bytes) -> bytes:
    der: bytes = tsp.TimeStampReq(
        {
            "version": 1,
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": hashlib.sha256(data).digest(),
            },
            "nonce": secrets.randbits(63),
            "cert_req": True,
        }
    ).dump()
    return der


def request_token(settings: Settings, data: bytes) -> bytes:
    """The DER token (a CMS ContentInfo) from ``archive.tsa_url`` over SHA-256(data)."""
    cfg = settings.archive
    request = urllib.request.Request(  # noqa: S310 - the operator's configured https/http URL
        cfg.tsa_url,
        data=build_request(data),
        headers={"Content-Type": "application/timestamp-query"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=cfg.tsa_timeout_seconds) as response:  # noqa: S310
        body = response.read(MAX_RESPONSE + 1)
    if len(body) > MAX_RESPONSE:
        raise TimestampInvalid("time-stamp response too large")
    try:
        resp = tsp.TimeStampResp.load(body)
        status = resp["status"]["status"].native
    except ValueError:
        raise TimestampInvalid("not a time-stamp response") from None
    if status not in ("granted", "granted_with_mods"):
        raise TimestampInvalid(f"TSA refused: {status}")
    token: bytes = resp["time_stamp_token"].dump()
    verify_token(token, data)
    return token


def verify_token(token: bytes, data: bytes) -> tuple[datetime, x509.Certificate]:
    """The time the TSA vouches for and its certificate; raise :class:`TimestampInvalid`."""
    try:
        info = cms.ContentInfo.load(token)
        sd = info["content"]
        encap = sd["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            raise TimestampInvalid("not a time-stamp token")
        tst_der = encap["content"].contents
        tst = tsp.TSTInfo.load(tst_der)
        imprint = tst["message_imprint"]
        if imprint["hash_algorithm"]["algorithm"].native != "sha256" or not hmac.compare_digest(
            imprint["hashed_message"].native, hashlib.sha256(data).digest()
        ):
            raise TimestampInvalid("the token is for other data")
        # the token is a CMS signature over the TSTInfo: check it like a detached one
        detached = cms.ContentInfo(
            {
                "content_type": "signed_data",
                "content": cms.SignedData(
                    {
                        "version": sd["version"],
                        "digest_algorithms": sd["digest_algorithms"],
                        "encap_content_info": {"content_type": "data"},
                        "certificates": sd["certificates"],
                        "signer_infos": sd["signer_infos"],
                    }
                ),
            }
        )
        signer = _check_signed(tst_der, detached.dump())
        moment: datetime = tst["gen_time"].native
        return moment, signer
    except TimestampInvalid:
        raise
    except (ValueError, TypeError, KeyError, AttributeError):
        raise TimestampInvalid("malformed time-stamp token") from None


def _check_signed(tst_der: bytes, detached: bytes) -> x509.Certificate:
    try:
        return verify_detached(tst_der, detached, content_type="tst_info").signer
    except SignatureInvalid as exc:
        raise TimestampInvalid(f"token signature: {exc}") from None


def issue_token(request_der: bytes, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> bytes:
    """A granted TimeStampResp for ``request_der`` (a minimal TSA: dev and tests)."""
    req = tsp.TimeStampReq.load(request_der)
    fields = {
        "version": "v1",
        "policy": "1.3.6.1.4.1.99999.1",
        "message_imprint": req["message_imprint"],
        "serial_number": secrets.randbits(63),
        "gen_time": datetime.now(UTC),
    }
    if req["nonce"].native is not None:
        fields["nonce"] = req["nonce"]
    tst = tsp.TSTInfo(fields)
    cert = asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER))
    attrs = cms.CMSAttributes(
        [
            cms.CMSAttribute({"type": "content_type", "values": ["tst_info"]}),
            cms.CMSAttribute(
                {"type": "message_digest", "values": [hashlib.sha256(tst.dump()).digest()]}
            ),
        ]
    )
    signature = key.sign(attrs.dump(), padding.PKCS1v15(), hashes.SHA256())
    signer = cms.SignerInfo(
        {
            "version": "v1",
            "sid": cms.SignerIdentifier(
                {
                    "issuer_and_serial_number": {
                        "issuer": cert.issuer,
                        "serial_number": cert.serial_number,
                    }
                }
            ),
            "digest_algorithm": {"algorithm": "sha256"},
            "signed_attrs": attrs,
            "signature_algorithm": {"algorithm": "rsassa_pkcs1v15"},
            "signature": signature,
        }
    )
    sd = cms.SignedData(
        {
            "version": "v3",
            "digest_algorithms": [{"algorithm": "sha256"}],
            "encap_content_info": {"content_type": "tst_info", "content": tst},
            "certificates": [cert],
            "signer_infos": [signer],
        }
    )
    token = cms.ContentInfo({"content_type": "signed_data", "content": sd})
    resp: bytes = tsp.TimeStampResp(
        {"status": {"status": "granted"}, "time_stamp_token": token}
    ).dump()
    return resp
