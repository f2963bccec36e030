"""Certificate verification and the OIN.

The sender's identity is its OIN, read from the ``serialNumber`` attribute of the subject
of a certificate that chains to a configured trust root, is within its validity period,
is usable for client authentication and signatures, and is not revoked. Revocation comes
from the process's :class:`~digipoort.pki.revocation.RevocationService` (local CRL files,
CRLs fetched from distribution points, OCSP) when one is given — then the intermediates
are checked too — or else from the local CRL files given here (leaf only). Nothing here
does I/O: the service answers from its cache and fetches in the background.

Chain building and signature/CA-flag checks are done by ``cryptography.x509.verification``
(Rust, fast). Validity, key usage, revocation and OIN are checked here so that every
rejection carries a precise reason. Verdicts are cached per (leaf, presented chain) for a
short time, because verification runs per TLS connection and per SOAP request.
"""

from __future__ import annotations

import hashlib
import itertools
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)
from prometheus_client import Counter

__all__ = [
    "CertificateRejected",
    "CertificateVerifier",
    "RejectReason",
    "VerifiedIdentity",
    "is_valid_oin",
    "load_crls",
    "oin_from_certificate",
]

if TYPE_CHECKING:
    from digipoort.pki.revocation import RevocationService

log = structlog.get_logger(__name__)

UnknownStatus: TypeAlias = Literal["fail_closed", "soft_fail"]
#: How long a soft-failed ("status unknown, accepted") verdict may be cached.
_SOFT_FAIL_TTL = timedelta(seconds=5)

RejectReason: TypeAlias = Literal[
    "untrusted",
    "expired",
    "not_yet_valid",
    "revoked",
    "no_oin",
    "bad_usage",
    "crl_unavailable",
]

CERTIFICATES_REJECTED = Counter(
    "digipoort_certificate_rejected_total",
    "Certificates refused by the application's verifier, per port and reason",
    ["port", "reason"],
)
REVOCATION_SOFT_FAILS = Counter(
    "digipoort_revocation_soft_fail_total",
    "Certificates accepted although their revocation status was unknown (soft-fail)",
)

_OIN = re.compile(r"[0-9]{20}")
_MAX_CHAIN_DEPTH = 6


def is_valid_oin(value: str) -> bool:
    """True for exactly 20 ASCII digits."""
    return isinstance(value, str) and _OIN.fullmatch(value) is not None


def oin_from_certificate(cert: x509.Certificate) -> str | None:
    """The subject serialNumber, if there is exactly one and it is a valid OIN."""
    values = cert.subject.get_attributes_for_oid(NameOID.SERIAL_NUMBER)
    if len(values) != 1:
        return None
    value = values[0].value
    return value if isinstance(value, str) and is_valid_oin(value) else None


def certificate_file_oin(path: Path) -> str:
    """The OIN of the (first) certificate in a PEM file; ValueError if it carries none.
    For test clients, which must know who they are before they connect."""
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    oin = oin_from_certificate(cert)
    if oin is None:
        raise ValueError(f"{path}: no OIN in the certificate subject")
    return oin


class CertificateRejected(Exception):
    """The certificate does not identify a trusted participant. ``reason`` says why."""

    def __init__(self, reason: RejectReason, detail: str = "") -> None:
        message = f"certificate rejected: {reason}"
        super().__init__(f"{message} ({detail})" if detail else message)
        self.reason: RejectReason = reason
        self.detail = detail


@dataclass(frozen=True)
class VerifiedIdentity:
    """Who a verified certificate belongs to."""

    oin: str
    subject: str  # RFC 4514
    serial_number: int
    not_after: datetime
    fingerprint_sha256: str  # lowercase hex of the DER certificate
    certificate: x509.Certificate


# --------------------------------------------------------------------------- loading


def _split_pem(data: bytes, label: bytes) -> list[bytes]:
    pattern = re.compile(
        b"-----BEGIN " + label + b"-----.+?-----END " + label + b"-----", re.DOTALL
    )
    return pattern.findall(data)


def load_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """All CRLs in a file: one or more PEM blocks, or a single DER CRL."""
    return parse_crls(path.read_bytes())


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """All CRLs in PEM (one or more blocks) or DER (one CRL) bytes."""
    blocks = _split_pem(data, b"X509 CRL")
    if blocks:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    return [x509.load_der_x509_crl(data)]


def _load_certs(path: Path) -> list[x509.Certificate]:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


# --------------------------------------------------------------------------- CRL index


@dataclass(frozen=True)
class _CrlIndex:
    """CRLs grouped by issuer name, newest (by lastUpdate) first."""

    by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]]
    _signature_ok: dict[tuple[int, bytes], bool] = field(default_factory=dict)

    @classmethod
    def build(cls, crls: Iterable[x509.CertificateRevocationList]) -> _CrlIndex:
        by_issuer: dict[x509.Name, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            by_issuer.setdefault(crl.issuer, []).append(crl)
        for group in by_issuer.values():
            group.sort(key=lambda crl: crl.last_update_utc, reverse=True)
        return cls(by_issuer)

    def for_issuer(self, issuer: x509.Certificate) -> list[x509.CertificateRevocationList]:
        """CRLs named for this issuer whose signature its key confirms, newest first."""
        candidates = self.by_issuer.get(issuer.subject, [])
        return [crl for crl in candidates if self._signed_by(crl, issuer)]

    def _signed_by(self, crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
        key = (id(crl), issuer.fingerprint(hashes.SHA256()))
        ok = self._signature_ok.get(key)
        if ok is None:
            public_key = issuer.public_key()
            ok = crl.is_signature_valid(public_key)  # type: ignore[arg-type]
            self._signature_ok[key] = ok
        return ok

    def has_issuer_name(self, name: x509.Name) -> bool:
        return name in self.by_issuer


# --------------------------------------------------------------------------- checks


def _validity_reason(cert: x509.Certificate, at: datetime) -> RejectReason | None:
    if at < cert.not_valid_before_utc:
        return "not_yet_valid"
    if at > cert.not_valid_after_utc:
        return "expired"
    return None


def _ancestor_validity_reason(
    leaf: x509.Certificate, pool: Sequence[x509.Certificate], at: datetime
) -> RejectReason | None:
    """After a failed chain build: was it because an issuer (by name) is out of validity?"""
    current = leaf
    for _ in range(_MAX_CHAIN_DEPTH):
        issuers = [c for c in pool if c.subject == current.issuer and c is not current]
        if not issuers:
            return None
        reasons = [_validity_reason(c, at) for c in issuers]
        if all(reasons):
            return reasons[0]
        if current.issuer == current.subject:
            return None
        current = next(c for c, r in zip(issuers, reasons, strict=True) if r is None)
    return None


def _extension(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _usage_problem(
    cert: x509.Certificate, required_eku: x509.ObjectIdentifier | None
) -> str | None:
    """Why this end-entity certificate may not authenticate a participant, or None."""
    constraints = _extension(cert, x509.BasicConstraints)
    if isinstance(constraints, x509.BasicConstraints) and constraints.ca:
        return "a CA certificate cannot identify a participant"
    usage = _extension(cert, x509.KeyUsage)
    if isinstance(usage, x509.KeyUsage) and not usage.digital_signature:
        return "keyUsage lacks digitalSignature"
    eku = _extension(cert, x509.ExtendedKeyUsage)
    if required_eku is not None and isinstance(eku, x509.ExtendedKeyUsage):
        allowed = {required_eku, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}
        if not allowed.intersection(eku):
            return f"extendedKeyUsage lacks {required_eku.dotted_string}"
    return None


def _fingerprint(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


# --------------------------------------------------------------------------- verifier

_CacheKey: TypeAlias = tuple[bytes, tuple[bytes, ...]]
_Rejection: TypeAlias = tuple[RejectReason, str]
_Verdict: TypeAlias = VerifiedIdentity | _Rejection
_Loader: TypeAlias = Callable[[], tuple[x509.Certificate, list[x509.Certificate]]]


class CertificateVerifier:
    """Verifies participant certificates against trust roots and CRLs; yields the OIN.

    ``require_crl``: reject ("crl_unavailable") when no CRL of the leaf's issuer is loaded;
    by default such a leaf is accepted. A loaded CRL past its nextUpdate always rejects.
    ``required_eku``: the extendedKeyUsage a leaf must allow if it has that extension
    (default clientAuth; None disables the check).
    ``revocation``: the process's revocation service; then every certificate of the path
    below the anchor is checked, and a status that is unknown (no current CRL, no OCSP
    answer) rejects with "crl_unavailable" — for a leaf when ``require_crl``, for any
    certificate that names a CRL distribution point or OCSP responder — unless
    ``unknown_status="soft_fail"`` (then accepted, logged and counted).
    ``port``: when given, every rejection counts in ``digipoort_certificate_rejected_total``.
    """

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        *,
        intermediates: Sequence[x509.Certificate] = (),
        crls: Sequence[x509.CertificateRevocationList] = (),
        crl_files: Sequence[Path] = (),
        require_crl: bool = False,
        required_eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
        cache_ttl: float = 60.0,
        cache_size: int = 4096,
        revocation: RevocationService | None = None,
        unknown_status: UnknownStatus = "fail_closed",
        port: str | None = None,
    ) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is required")
        self._anchors = list(trust_anchors)
        self._store = Store(self._anchors)
        self._intermediates = list(intermediates)
        self._static_crls = list(crls)
        self._crl_files = list(crl_files)
        self._file_crls: dict[Path, list[x509.CertificateRevocationList]] = {
            path: load_crls(path) for path in self._crl_files
        }
        self._crl_index = _CrlIndex.build([*self._static_crls, *_flatten(self._file_crls.values())])
        self._require_crl = require_crl
        self._revocation = revocation
        self._port = port  # label of digipoort_certificate_rejected_total
        self._soft_fail = unknown_status == "soft_fail"
        self._required_eku = required_eku
        self._cache_ttl = cache_ttl
        self._cache_size = cache_size
        self._cache: OrderedDict[_CacheKey, tuple[float, _Verdict, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._generation = 0

    @classmethod
    def from_files(
        cls,
        ca_file: Path,
        crl_files: Sequence[Path] = (),
        intermediates_file: Path | None = None,
        *,
        require_crl: bool = False,
        required_eku: x509.ObjectIdentifier | None = ExtendedKeyUsageOID.CLIENT_AUTH,
        cache_ttl: float = 60.0,
        revocation: RevocationService | None = None,
        unknown_status: UnknownStatus = "fail_closed",
        port: str | None = None,
    ) -> CertificateVerifier:
        """Trust roots from ca_file (PEM, may hold several); CRLs and intermediates optional."""
        intermediates = _load_certs(intermediates_file) if intermediates_file else []
        return cls(
            _load_certs(ca_file),
            intermediates=intermediates,
            crl_files=crl_files,
            require_crl=require_crl,
            required_eku=required_eku,
            cache_ttl=cache_ttl,
            revocation=revocation,
            unknown_status=unknown_status,
            port=port,
        )

    # ----------------------------------------------------------------- public

    def verify(
        self,
        leaf: x509.Certificate,
        chain: Sequence[x509.Certificate] = (),
        *,
        at: datetime | None = None,
    ) -> VerifiedIdentity:
        """Verify leaf (with optional presented intermediates); raise CertificateRejected."""
        der = serialization.Encoding.DER
        key = (
            _fingerprint(leaf.public_bytes(der)),
            tuple(_fingerprint(c.public_bytes(der)) for c in chain),
        )
        return self._verify_cached(key, lambda: (leaf, list(chain)), at)

    async def verify_async(
        self, leaf: x509.Certificate, chain: Sequence[x509.Certificate] = ()
    ) -> VerifiedIdentity:
        """Like verify, but first lets the revocation service fetch what it lacks for this
        path (CRL, OCSP; bounded by its timeout), so a first contact is not "unknown"."""
        if self._revocation is not None:
            try:
                path = self._build_path(leaf, list(chain), datetime.now(UTC))
            except CertificateRejected:
                path = []
            for cert, issuer in itertools.pairwise(path):
                await self._revocation.prepare(cert, issuer)
        return self.verify(leaf, chain)

    def verify_der(self, der: bytes, chain_der: Sequence[bytes] = ()) -> VerifiedIdentity:
        """Like verify, from DER bytes (as ``getpeercert(binary_form=True)`` returns)."""
        key = (_fingerprint(der), tuple(_fingerprint(c) for c in chain_der))

        def parse() -> tuple[x509.Certificate, list[x509.Certificate]]:
            try:
                return (
                    x509.load_der_x509_certificate(der),
                    [x509.load_der_x509_certificate(c) for c in chain_der],
                )
            except ValueError:
                raise CertificateRejected("untrusted", "malformed certificate") from None

        return self._verify_cached(key, parse, None)

    def reload_crls(self) -> None:
        """Re-read the CRL files. A file that cannot be read keeps its previous CRLs."""
        file_crls = dict(self._file_crls)
        for path in self._crl_files:
            try:
                file_crls[path] = load_crls(path)
            except (OSError, ValueError) as exc:
                log.warning("pki.crl_reload_failed", path=str(path), error=type(exc).__name__)
        index = _CrlIndex.build([*self._static_crls, *_flatten(file_crls.values())])
        with self._lock:
            self._file_crls = file_crls
            self._crl_index = index
            self._generation += 1
            self._cache.clear()

    def clear_cache(self) -> None:
        """Forget all cached verdicts (reload_crls does this too)."""
        with self._lock:
            self._generation += 1
            self._cache.clear()

    def expiry_report(self) -> dict[str, datetime]:
        """not_after of each trust anchor and intermediate, nextUpdate of each issuer's CRL."""
        report: dict[str, datetime] = {}
        for cert in self._anchors:
            report[f"anchor:{cert.subject.rfc4514_string()}"] = cert.not_valid_after_utc
        for cert in self._intermediates:
            if cert in self._anchors:
                continue
            report[f"intermediate:{cert.subject.rfc4514_string()}"] = cert.not_valid_after_utc
        for issuer, crls in self._crl_index.by_issuer.items():
            next_update = crls[0].next_update_utc
            if next_update is not None:
                report[f"crl:{issuer.rfc4514_string()}"] = next_update
        if self._revocation is not None:
            report.update(self._revocation.expiry_report())
        return report

    # ----------------------------------------------------------------- internals

    def _verify_cached(
        self,
        key: _CacheKey,
        load: _Loader,
        at: datetime | None,
    ) -> VerifiedIdentity:
        try:
            return self._verify_uncounted(key, load, at)
        except CertificateRejected as rejected:
            if self._port is not None:
                CERTIFICATES_REJECTED.labels(self._port, rejected.reason).inc()
            raise

    def _verify_uncounted(
        self,
        key: _CacheKey,
        load: _Loader,
        at: datetime | None,
    ) -> VerifiedIdentity:
        if at is not None:  # an explicit time is a question about the past/future: no cache
            return _raise_or_return(self._evaluate(*load(), at)[0])
        now_mono = time.monotonic()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[0] > now_mono and cached[2] == self._source_gen():
                self._cache.move_to_end(key)
                return _raise_or_return(cached[1])
            generation = self._generation
        source_gen = self._source_gen()
        verdict, valid_until = self._evaluate(*load(), datetime.now(UTC))
        self._remember(key, verdict, valid_until, generation, source_gen)
        return _raise_or_return(verdict)

    def _source_gen(self) -> int:
        """Changes whenever the revocation service learns something new."""
        return self._revocation.generation if self._revocation is not None else 0

    def _remember(
        self,
        key: _CacheKey,
        verdict: _Verdict,
        valid_until: datetime | None,
        generation: int,
        source_gen: int,
    ) -> None:
        ttl = self._cache_ttl
        if valid_until is not None:
            ttl = min(ttl, (valid_until - datetime.now(UTC)).total_seconds())
        if ttl <= 0:
            return
        with self._lock:
            if generation != self._generation:  # CRLs were reloaded meanwhile
                return
            self._cache[key] = (time.monotonic() + ttl, verdict, source_gen)
            self._cache.move_to_end(key)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)

    def _evaluate(
        self, leaf: x509.Certificate, chain: list[x509.Certificate], at: datetime
    ) -> tuple[_Verdict, datetime | None]:
        """The verdict, and until when it holds (for the cache)."""
        try:
            return self._check(leaf, chain, at)
        except CertificateRejected as rejected:
            return (rejected.reason, rejected.detail), None

    def _check(
        self, leaf: x509.Certificate, chain: list[x509.Certificate], at: datetime
    ) -> tuple[VerifiedIdentity, datetime]:
        reason = _validity_reason(leaf, at)
        if reason is not None:
            raise CertificateRejected(reason, "leaf certificate")
        path = self._build_path(leaf, chain, at)
        problem = _usage_problem(leaf, self._required_eku)
        if problem is not None:
            raise CertificateRejected("bad_usage", problem)
        if self._revocation is not None:
            crl_next_update = self._check_path_revocation(path, at)
        else:
            issuer = path[1] if len(path) > 1 else path[0]  # path[0] only for a pinned leaf
            crl_next_update = self._check_revocation(leaf, issuer, at)
        oin = oin_from_certificate(leaf)
        if oin is None:
            raise CertificateRejected("no_oin", "subject serialNumber is not a 20-digit OIN")
        valid_until = min(c.not_valid_after_utc for c in path)
        if crl_next_update is not None:
            valid_until = min(valid_until, crl_next_update)
        return _identity(leaf, oin), valid_until

    def _build_path(
        self, leaf: x509.Certificate, chain: list[x509.Certificate], at: datetime
    ) -> list[x509.Certificate]:
        """leaf, intermediates..., trust anchor; signatures, CA flags and times checked."""
        pool = [*chain, *self._intermediates]
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .max_chain_depth(_MAX_CHAIN_DEPTH)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                ee_policy=ExtensionPolicy.permit_all(),
            )
            .build_client_verifier()
        )
        try:
            return verifier.verify(leaf, pool).chain
        except VerificationError as exc:
            reason = _ancestor_validity_reason(leaf, [*pool, *self._anchors], at)
            raise CertificateRejected(reason or "untrusted", str(exc)) from None

    def _check_path_revocation(
        self, path: Sequence[x509.Certificate], at: datetime
    ) -> datetime | None:
        """Ask the revocation service about every certificate below the anchor."""
        from digipoort.pki.revocation import publishes_revocation

        assert self._revocation is not None
        valid_until: datetime | None = None
        for position, (cert, issuer) in enumerate(itertools.pairwise(path)):
            what = "leaf" if position == 0 else "issuing CA"
            status = self._revocation.status(cert, issuer, at)
            if status.state == "revoked":
                raise CertificateRejected("revoked", f"{what}: {status.detail} ({status.source})")
            if status.state == "good":
                if status.valid_until is not None:
                    valid_until = min(valid_until or status.valid_until, status.valid_until)
                continue
            if not ((position == 0 and self._require_crl) or publishes_revocation(cert)):
                continue
            if not self._soft_fail:
                raise CertificateRejected("crl_unavailable", f"{what}: {status.detail}")
            log.warning(
                "pki.revocation_unknown_accepted",
                subject=cert.subject.rfc4514_string(),
                detail=status.detail,
            )
            REVOCATION_SOFT_FAILS.inc()
            soon = at + _SOFT_FAIL_TTL
            valid_until = min(valid_until or soon, soon)
        return valid_until

    def _check_revocation(
        self, leaf: x509.Certificate, issuer: x509.Certificate, at: datetime
    ) -> datetime | None:
        """Raise if leaf is revoked or its issuer's CRL is unusable; return nextUpdate used."""
        index = self._crl_index
        crls = index.for_issuer(issuer)
        if not crls:
            if index.has_issuer_name(issuer.subject):
                raise CertificateRejected("crl_unavailable", "CRL signature does not verify")
            if self._require_crl:
                raise CertificateRejected("crl_unavailable", "no CRL for the issuer")
            return None
        crl = crls[0]
        if crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None:
            raise CertificateRejected("revoked", f"serial {leaf.serial_number:x}")
        next_update = crl.next_update_utc
        if next_update is not None and at > next_update:
            raise CertificateRejected("crl_unavailable", "CRL is past its nextUpdate")
        return next_update


def _flatten(
    groups: Iterable[list[x509.CertificateRevocationList]],
) -> list[x509.CertificateRevocationList]:
    return [crl for group in groups for crl in group]


def _identity(leaf: x509.Certificate, oin: str) -> VerifiedIdentity:
    return VerifiedIdentity(
        oin=oin,
        subject=leaf.subject.rfc4514_string(),
        serial_number=leaf.serial_number,
        not_after=leaf.not_valid_after_utc,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        certificate=leaf,
    )


def _raise_or_return(verdict: _Verdict) -> VerifiedIdentity:
    if isinstance(verdict, VerifiedIdentity):
        return verdict
    reason, detail = verdict
    raise CertificateRejected(reason, detail)
