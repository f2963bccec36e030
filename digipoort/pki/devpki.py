"""A development PKI shaped like PKIoverheid.

Layout written by :func:`create_dev_pki` (see ``docs/pki.md``)::

    ca.crt / ca.key                      root "Staat der Nederlanden Test Root CA"
    intermediate.crt / intermediate.key  "Test PKIoverheid Organisatie Services CA"
    chain.pem                            intermediate + root
    server.crt / server.key              the gateway (CN=localhost, OIN GATEWAY_OIN)
    operator.crt / operator.key          the portal's operator (OIN OPERATOR_OIN)
    <OIN>.crt / <OIN>.key                one per participant
    revoked.crt / revoked.key            Alfa's OIN, listed in ca.crl
    expired.crt / expired.key            Alfa's OIN, validity entirely in the past
    untrusted-ca.crt / untrusted-ca.key  a root that is not in the trust store
    untrusted.crt / untrusted.key        Alfa's OIN, issued by the untrusted root
    ca.crl                               CRL of the intermediate
    root.crl                             CRL of the root (lists no one)

Certificates issued by the root and the intermediate name a CRL distribution point
(``<revocation_url>/crl/root.crl`` / ``.../crl/ca.crl``) and an OCSP responder
(``<revocation_url>/ocsp/root`` / ``.../ocsp/intermediate``) in AIA; ``digipoort dev
pki-server`` (:mod:`digipoort.pki.responder`) serves both from this directory, and
:func:`revoke` (``digipoort dev revoke OIN``) adds a certificate to ``ca.crl``.

Every end-entity ``.crt`` holds the leaf followed by its issuing CA, so a TLS client that
calls ``ssl.SSLContext.load_cert_chain`` sends the chain. Keys are RSA 2048 (WS-Security
rsa-sha1/rsa-sha256 need RSA), PEM, unencrypted, mode 0600.

Re-running is idempotent: an existing key is never replaced unless ``force``; an existing
certificate is kept while it still matches its key, subject and issuer and is not close
to expiry; anything missing or stale is (re)issued from the keys on disk.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from digipoort.pki.trust import is_valid_oin

__all__ = [
    "ALFA",
    "DEFAULT_REVOCATION_URL",
    "GATEWAY_OIN",
    "OPERATOR_OIN",
    "DevParticipant",
    "DevPkiLayout",
    "create_dev_pki",
    "revoke",
]


@dataclass(frozen=True)
class DevParticipant:
    """A test organisation that gets a certificate ``<oin>.crt``."""

    oin: str  # 20 digits
    name: str  # organisation name, goes into O= and CN=


GATEWAY_OIN = "00000099300000010000"  # the gateway's own (Digipoort test) OIN
OPERATOR_OIN = "00000099300000020000"  # operator.crt: the portal's operator (docs/portal.md)
ALFA = DevParticipant("00000099100000010000", "Leverancier Alfa BV")
"""Whose identity the revoked, expired and untrusted certificates carry."""

_KEY_SIZE = 2048
_CA_LIFETIME = timedelta(days=3650)
_LEAF_LIFETIME = timedelta(days=730)
_CRL_LIFETIME = timedelta(days=30)
_CRL_REISSUE_MARGIN = timedelta(days=7)
_RENEW_MARGIN = timedelta(days=30)
_BACKDATE = timedelta(minutes=5)  # tolerate small clock differences between processes
_UB_NAME = 64  # RFC 5280 upper bound for CN and O
DEFAULT_REVOCATION_URL = "http://127.0.0.1:8089"
"""Where ``digipoort dev pki-server`` listens by default (``pki.responder_port``)."""


@dataclass(frozen=True)
class DevPkiLayout:
    """File names of a dev PKI directory, for callers that need to find them."""

    pki_dir: Path

    def _p(self, name: str) -> Path:
        return self.pki_dir / name

    @property
    def ca_cert(self) -> Path:
        return self._p("ca.crt")

    @property
    def ca_key(self) -> Path:
        return self._p("ca.key")

    @property
    def intermediate_cert(self) -> Path:
        return self._p("intermediate.crt")

    @property
    def intermediate_key(self) -> Path:
        return self._p("intermediate.key")

    @property
    def chain(self) -> Path:
        return self._p("chain.pem")

    @property
    def crl(self) -> Path:
        return self._p("ca.crl")

    @property
    def root_crl(self) -> Path:
        return self._p("root.crl")

    def cert(self, stem: str) -> Path:
        """``<stem>.crt``: stem is an OIN or server, revoked, expired, untrusted(-ca)."""
        return self._p(f"{stem}.crt")

    def key(self, stem: str) -> Path:
        return self._p(f"{stem}.key")


# --------------------------------------------------------------------------- file output


@dataclass
class _Output:
    """Writes files atomically and remembers which ones it wrote."""

    written: list[Path] = field(default_factory=list)

    def write(self, path: Path, data: bytes, *, secret: bool = False) -> None:
        mode = 0o600 if secret else 0o644
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.written.append(path)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _read_certs(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _load_or_create_key(path: Path, out: _Output, *, force: bool) -> tuple[rsa.RSAPrivateKey, bool]:
    """Return (key, created). An existing key is only replaced when force is set."""
    if path.exists() and not force:
        # Our own file; validating the RSA key costs as much as generating one, and the
        # caller compares its public half with the certificate before keeping anything.
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} is not an RSA key; re-create the dev PKI with force")
        return key, False
    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_SIZE)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    out.write(path, pem, secret=True)
    return key, True


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class _Spec:
    """What one certificate should look like."""

    stem: str
    subject: x509.Name
    not_before: datetime
    not_after: datetime
    extensions: tuple[tuple[x509.ExtensionType, bool], ...]
    end_entity: bool = True  # the .crt file then also carries the issuing CA
    expired: bool = False  # the deliberately expired test certificate


def _name(*, cn: str, o: str, oin: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COUNTRY_NAME, "NL"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, o[:_UB_NAME]),
        x509.NameAttribute(NameOID.COMMON_NAME, cn[:_UB_NAME]),
    ]
    if oin is not None:
        attrs.append(x509.NameAttribute(NameOID.SERIAL_NUMBER, oin))
    return x509.Name(attrs)


def _revocation_extensions(
    url: str | None, issuer: str
) -> tuple[tuple[x509.ExtensionType, bool], ...]:
    """CRL distribution point and OCSP responder (AIA) of a certificate issued by issuer
    ("root" or "intermediate"); none without a URL."""
    if not url:
        return ()
    crl = "root.crl" if issuer == "root" else "ca.crl"
    cdp = x509.CRLDistributionPoints(
        [
            x509.DistributionPoint(
                [x509.UniformResourceIdentifier(f"{url}/crl/{crl}")], None, None, None
            )
        ]
    )
    aia = x509.AuthorityInformationAccess(
        [
            x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(f"{url}/ocsp/{issuer}"),
            )
        ]
    )
    return ((cdp, False), (aia, False))


def _ca_extensions(path_length: int | None) -> tuple[tuple[x509.ExtensionType, bool], ...]:
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return ((x509.BasicConstraints(ca=True, path_length=path_length), True), (usage, True))


def _leaf_extensions(*, ipv6: bool = False) -> tuple[tuple[x509.ExtensionType, bool], ...]:
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if ipv6:
        names.append(x509.IPAddress(ipaddress.ip_address("::1")))
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=True,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    return (
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (usage, True),
        (eku, False),
        (x509.SubjectAlternativeName(names), False),
    )


def _build(spec: _Spec, key: rsa.RSAPrivateKey, issuer: _Issuer | None) -> x509.Certificate:
    """Issue spec for key; issuer None means self-signed."""
    public_key = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(spec.subject)
        .issuer_name(issuer.cert.subject if issuer else spec.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key())
        builder = builder.add_extension(aki, critical=False)
    for extension, critical in spec.extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(issuer.key if issuer else key, hashes.SHA256())


def _still_good(
    cert: x509.Certificate,
    spec: _Spec,
    key: rsa.RSAPrivateKey,
    issuer: _Issuer | None,
    now: datetime,
) -> bool:
    """Can an existing certificate be kept for this spec, key and issuer?"""
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        return False
    if cert.subject != spec.subject:
        return False
    if _pointers(cert) != _pointers_of(spec.extensions):
        return False  # e.g. made before the dev PKI had revocation URLs
    signer = issuer.cert if issuer else cert
    try:
        cert.verify_directly_issued_by(signer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    if spec.expired:
        return cert.not_valid_after_utc < now
    return cert.not_valid_after_utc - now > _RENEW_MARGIN


def _pointers(cert: x509.Certificate) -> list[x509.ExtensionType]:
    kinds = (x509.CRLDistributionPoints, x509.AuthorityInformationAccess)
    return [e.value for e in cert.extensions if isinstance(e.value, kinds)]


def _pointers_of(
    extensions: tuple[tuple[x509.ExtensionType, bool], ...],
) -> list[x509.ExtensionType]:
    kinds = (x509.CRLDistributionPoints, x509.AuthorityInformationAccess)
    return [e for e, _ in extensions if isinstance(e, kinds)]


def _ensure_cert(
    pki_dir: Path,
    spec: _Spec,
    issuer: _Issuer | None,
    out: _Output,
    *,
    force: bool,
    now: datetime,
) -> _Issuer:
    """Make <stem>.crt/.key match spec; the .crt is leaf + issuer (root: itself only)."""
    key, created = _load_or_create_key(pki_dir / f"{spec.stem}.key", out, force=force)
    cert_path = pki_dir / f"{spec.stem}.crt"
    on_disk = _read_certs(cert_path)
    tail = [issuer.cert] if issuer is not None and spec.end_entity else []
    if not created and on_disk and _still_good(on_disk[0], spec, key, issuer, now):
        cert = on_disk[0]
    else:
        cert = _build(spec, key, issuer)
    if on_disk != [cert, *tail]:
        out.write(cert_path, b"".join(_pem(c) for c in (cert, *tail)))
    return _Issuer(cert, key)


# --------------------------------------------------------------------------- CRL


def _crl_is_current(
    crl: x509.CertificateRevocationList,
    intermediate: _Issuer,
    revoked_serials: set[int],
    now: datetime,
) -> bool:
    if crl.issuer != intermediate.cert.subject:
        return False
    if not crl.is_signature_valid(intermediate.key.public_key()):
        return False
    next_update = crl.next_update_utc
    if next_update is None or next_update - now < _CRL_REISSUE_MARGIN:
        return False
    return {entry.serial_number for entry in crl} == revoked_serials


def _crl_number(crl: x509.CertificateRevocationList | None) -> int:
    if crl is None:
        return 0
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _ensure_crl(
    path: Path,
    intermediate: _Issuer,
    revoked: Sequence[x509.Certificate],
    out: _Output,
    *,
    force: bool,
    now: datetime,
) -> None:
    try:
        existing: x509.CertificateRevocationList | None = x509.load_pem_x509_crl(path.read_bytes())
    except (OSError, ValueError):
        existing = None
    serials = {cert.serial_number for cert in revoked}
    if existing is not None and existing.is_signature_valid(intermediate.key.public_key()):
        serials |= {entry.serial_number for entry in existing}  # revocation is for good
    if not force and existing is not None:
        if _crl_is_current(existing, intermediate, serials, now):
            return
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(intermediate.key.public_key())
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(intermediate.cert.subject)
        .last_update(now)
        .next_update(now + _CRL_LIFETIME)
        .add_extension(aki, critical=False)
        .add_extension(x509.CRLNumber(_crl_number(existing) + 1), critical=False)
    )
    dates = {cert.serial_number: cert.not_valid_before_utc for cert in revoked}
    if existing is not None:
        dates |= {e.serial_number: e.revocation_date_utc for e in existing}
    for serial in sorted(serials):
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(dates.get(serial, now))
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(intermediate.key, hashes.SHA256())
    out.write(path, crl.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------- entry point


def _check_participants(participants: Sequence[DevParticipant]) -> None:
    seen: set[str] = set()
    for participant in participants:
        if not is_valid_oin(participant.oin):
            raise ValueError(f"not a valid OIN (20 digits): {participant.oin!r}")
        if not participant.name.strip():
            raise ValueError(f"participant {participant.oin} has no name")
        if participant.oin in seen:
            raise ValueError(f"participant OIN listed twice: {participant.oin}")
        seen.add(participant.oin)


def _leaf_spec(
    stem: str, subject: x509.Name, now: datetime, *, ipv6: bool = False, url: str | None = None
) -> _Spec:
    return _Spec(
        stem=stem,
        subject=subject,
        not_before=now - _BACKDATE,
        not_after=now + _LEAF_LIFETIME,
        extensions=_leaf_extensions(ipv6=ipv6) + _revocation_extensions(url, "intermediate"),
    )


def _ca_spec(
    stem: str, subject: x509.Name, now: datetime, path_length: int | None, url: str | None = None
) -> _Spec:
    return _Spec(
        stem=stem,
        subject=subject,
        not_before=now - _BACKDATE,
        not_after=now + _CA_LIFETIME,
        extensions=_ca_extensions(path_length) + _revocation_extensions(url, "root"),
        end_entity=False,
    )


def create_dev_pki(
    pki_dir: Path,
    participants: Sequence[DevParticipant],
    *,
    force: bool = False,
    revocation_url: str | None = DEFAULT_REVOCATION_URL,
) -> list[Path]:
    """Write the dev PKI; returns the files written.

    Never overwrites an existing key unless force. Safe to re-run: see the module docstring.
    revocation_url: base URL of the dev pki-server named in the certificates (CDP, AIA);
    None leaves those extensions out.
    """
    _check_participants(participants)
    pki_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    run = _Run(
        pki_dir, _Output(), force, now, revocation_url.rstrip("/") if revocation_url else None
    )
    intermediate = run.authorities()
    run.gateway_and_participants(intermediate, participants)
    alfa = next((p for p in participants if p.oin == ALFA.oin), ALFA)
    revoked = run.negative_certificates(intermediate, alfa)
    _ensure_crl(pki_dir / "ca.crl", intermediate, [revoked], run.out, force=force, now=run.now)
    _ensure_crl(pki_dir / "root.crl", run.root(), [], run.out, force=force, now=run.now)
    return run.out.written


def revoke(pki_dir: Path, stem: str) -> int:
    """Add ``<stem>.crt`` (an OIN, or e.g. ``server``) to the intermediate's CRL (ca.crl),
    re-issued at once; returns the revoked serial number. The dev pki-server serves the
    new CRL and answers OCSP from it on the next request."""
    layout = DevPkiLayout(pki_dir)
    cert = x509.load_pem_x509_certificates(layout.cert(stem).read_bytes())[0]
    key = serialization.load_pem_private_key(layout.intermediate_key.read_bytes(), password=None)
    inter = x509.load_pem_x509_certificates(layout.intermediate_cert.read_bytes())[0]
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the intermediate key is not RSA")
    if cert.issuer != inter.subject:
        raise ValueError(f"{stem}.crt was not issued by the dev intermediate")
    now = datetime.now(UTC).replace(microsecond=0)
    _ensure_crl(layout.crl, _Issuer(inter, key), [cert], _Output(), force=True, now=now)
    return cert.serial_number


@dataclass(frozen=True)
class _Run:
    """One create_dev_pki call: where to write, whether to force, and one 'now'."""

    pki_dir: Path
    out: _Output
    force: bool
    now: datetime
    url: str | None = None

    def root(self) -> _Issuer:
        key, _ = _load_or_create_key(self.pki_dir / "ca.key", self.out, force=False)
        return _Issuer(
            x509.load_pem_x509_certificates((self.pki_dir / "ca.crt").read_bytes())[0], key
        )

    def ensure(self, spec: _Spec, issuer: _Issuer | None) -> _Issuer:
        return _ensure_cert(self.pki_dir, spec, issuer, self.out, force=self.force, now=self.now)

    def authorities(self) -> _Issuer:
        """Root and intermediate (+ chain.pem); returns the intermediate."""
        root_name = _name(cn="Staat der Nederlanden Test Root CA", o="Staat der Nederlanden")
        root = self.ensure(_ca_spec("ca", root_name, self.now, None), None)
        name = _name(cn="Test PKIoverheid Organisatie Services CA", o="Staat der Nederlanden")
        intermediate = self.ensure(_ca_spec("intermediate", name, self.now, 0, self.url), root)
        chain = _pem(intermediate.cert) + _pem(root.cert)
        if _read_bytes(self.pki_dir / "chain.pem") != chain:
            self.out.write(self.pki_dir / "chain.pem", chain)
        return intermediate

    def gateway_and_participants(
        self, intermediate: _Issuer, participants: Sequence[DevParticipant]
    ) -> None:
        gateway = _name(cn="localhost", o="Digipoort (test)", oin=GATEWAY_OIN)
        self.ensure(_leaf_spec("server", gateway, self.now, ipv6=True, url=self.url), intermediate)
        operator = _name(cn="Digipoort beheer (test)", o="Digipoort (test)", oin=OPERATOR_OIN)
        self.ensure(_leaf_spec("operator", operator, self.now, url=self.url), intermediate)
        for participant in participants:
            subject = _name(cn=participant.name, o=participant.name, oin=participant.oin)
            self.ensure(_leaf_spec(participant.oin, subject, self.now, url=self.url), intermediate)

    def negative_certificates(
        self, intermediate: _Issuer, alfa: DevParticipant
    ) -> x509.Certificate:
        """revoked, expired and untrusted, all with Alfa's OIN; returns the revoked one."""
        subject = _name(cn=alfa.name, o=alfa.name, oin=alfa.oin)
        revoked = self.ensure(_leaf_spec("revoked", subject, self.now, url=self.url), intermediate)
        expired = _Spec(
            stem="expired",
            subject=subject,
            not_before=self.now - timedelta(days=60),
            not_after=self.now - timedelta(days=1),
            extensions=_leaf_extensions() + _revocation_extensions(self.url, "intermediate"),
            expired=True,
        )
        self.ensure(expired, intermediate)
        untrusted_name = _name(cn="Untrusted Test Root CA", o="Onbekende Partij (test)")
        untrusted_ca = self.ensure(_ca_spec("untrusted-ca", untrusted_name, self.now, None), None)
        self.ensure(_leaf_spec("untrusted", subject, self.now), untrusted_ca)
        return revoked.cert


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None
