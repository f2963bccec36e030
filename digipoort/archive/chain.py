"""A TLS peer's chain for the archive's facts: Python's ``ssl`` exposes only the leaf
certificate, so the chain is rebuilt from the configured CA and intermediates
(``pki.ca_file``, ``pki.intermediates_file``), checking each issuer's signature."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from digipoort.config import Settings

__all__ = ["Issuers", "fingerprint"]

_CACHE = 1024
_DER = Encoding.DER


class Issuers:
    """Builds a peer's chain from the configured CA and intermediates (Python's ``ssl``
    only exposes the leaf)."""

    def __init__(self, settings: Settings) -> None:
        self._by_subject: dict[bytes, list[x509.Certificate]] = {}
        pki = settings.pki
        for path in (pki.ca_file, pki.intermediates_file):
            if path is None:
                continue
            try:
                certs = x509.load_pem_x509_certificates(settings.resolve(path).read_bytes())
            except (OSError, ValueError):
                continue
            for cert in certs:
                self._by_subject.setdefault(cert.subject.public_bytes(), []).append(cert)
        self._cache: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def chain(self, leaf_der: bytes) -> tuple[bytes, ...]:
        with self._lock:
            hit = self._cache.get(leaf_der)
            if hit is not None:
                self._cache.move_to_end(leaf_der)
                return hit
        chain = [leaf_der]
        try:
            cert = x509.load_der_x509_certificate(leaf_der)
            for _ in range(8):
                if cert.issuer == cert.subject:
                    break
                issuer = self._issuer_of(cert)
                if issuer is None:
                    break
                chain.append(issuer.public_bytes(_DER))
                cert = issuer
        except ValueError:
            pass
        found = tuple(chain)
        with self._lock:
            self._cache[leaf_der] = found
            while len(self._cache) > _CACHE:
                self._cache.popitem(last=False)
        return found

    def _issuer_of(self, cert: x509.Certificate) -> x509.Certificate | None:
        for candidate in self._by_subject.get(cert.issuer.public_bytes(), []):
            try:
                cert.verify_directly_issued_by(candidate)
            except Exception:  # noqa: S112 - not this issuer: try the next one
                continue
            return candidate
        return None


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()
