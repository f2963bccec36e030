"""The certificate that made a CMS signature: the one its SignerIdentifier names, by issuer
and serial number or by subject key identifier, among the certificates the signature
carries. Used by the S/MIME check of SMTP submissions and by the archive's manifests."""

from __future__ import annotations

from collections.abc import Iterable

from asn1crypto import cms
from cryptography import x509


def find_signer(
    sid: cms.SignerIdentifier, certs: Iterable[x509.Certificate]
) -> x509.Certificate | None:
    """The certificate of ``certs`` that ``sid`` names, or None (the caller refuses)."""
    for cert in certs:
        if sid.name == "issuer_and_serial_number":
            ias = sid.chosen
            if (
                cert.serial_number == ias["serial_number"].native
                and cert.issuer.public_bytes() == ias["issuer"].dump()
            ):
                return cert
        elif sid.name == "subject_key_identifier":
            try:
                ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            except x509.ExtensionNotFound:
                continue
            if ski.value.digest == sid.chosen.native:
                return cert
    return None
