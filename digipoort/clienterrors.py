"""Errors of the test clients (``digipoort submit/status --via …``), each one sentence.

:class:`ClientError` is their common base: the CLI shows ``str(exc)`` as the one line;
a ``foutcode`` attribute (a koppelvlak fault code or reply code) means the gateway
refused, exit 2; otherwise exit 1.

Why the gateway refused a client's certificate, as far as the client can know:

A TLS server that refuses a client certificate either sends an alert (its name says why:
``certificate_revoked``, ``certificate_expired``, ``unknown_ca``, …) or just closes the
connection. The test clients (WUS, SMTP, FTP) turn both into :class:`CertificateRefused`
with one sentence: the alert's meaning when there is one, else what the client can see for
itself in its certificate (expired, not yet valid, revoked in the CRL next to it, issued by
another CA than ``--ca``), else that the server closed the connection during the handshake.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

__all__ = [
    "ALERTS",
    "CertificateRefused",
    "ClientError",
    "alert_of",
    "diagnose",
    "local_problem",
]

#: OpenSSL reason suffix of a received alert → what it says about our certificate.
ALERTS = {
    "CERTIFICATE_REVOKED": "it is revoked",
    "CERTIFICATE_EXPIRED": "it has expired (or is not yet valid)",
    "UNKNOWN_CA": "it is issued by a CA the gateway does not trust",
    "BAD_CERTIFICATE": "the gateway considers it bad (wrong usage, chain or signature)",
    "UNSUPPORTED_CERTIFICATE": "its type or key usage is not accepted",
    "CERTIFICATE_UNKNOWN": "the gateway could not verify it",
    "CERTIFICATE_REQUIRED": "the gateway requires a client certificate and got none",
    "ACCESS_DENIED": "the gateway denies this certificate access",
    "HANDSHAKE_FAILURE": "the TLS handshake failed (no common protocol or cipher, or the "
    "certificate was not accepted)",
}


class ClientError(Exception):
    """A test client's failure, told in one sentence; ``foutcode`` if the gateway refused."""

    foutcode: str | None = None


class CertificateRefused(ClientError):
    """The gateway refused our client certificate (``alert``: the TLS alert name when the
    server sent one)."""

    foutcode = "certificate-refused"

    def __init__(self, message: str, alert: str | None = None) -> None:
        super().__init__(message)
        self.alert = alert


def alert_of(exc: BaseException | None) -> str | None:
    """The name of the TLS alert in ``exc`` or its causes (e.g. ``CERTIFICATE_REVOKED``)."""
    seen = 0
    while exc is not None and seen < 8:
        reason = getattr(exc, "reason", None)
        if isinstance(exc, ssl.SSLError) and isinstance(reason, str):
            for name in ALERTS:
                if reason.endswith("ALERT_" + name):
                    return name
        for arg in getattr(exc, "args", ()):
            if isinstance(arg, str):
                for name in ALERTS:
                    if f"ALERT_{name}" in arg.upper().replace(" ", "_"):
                        return name
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "os_error", None)
        seen += 1
    return None


def _closed_by_peer(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(
            exc, ConnectionResetError | BrokenPipeError | ssl.SSLEOFError | ssl.SSLZeroReturnError
        ):
            return True
        name = type(exc).__name__
        if name in ("ServerDisconnectedError", "SMTPServerDisconnected", "EOFError"):
            return True
        if "UNEXPECTED_EOF" in str(exc) or "EOF occurred" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__ or getattr(exc, "os_error", None)
        seen += 1
    return False


def local_problem(cert_file: Path, ca_file: Path | None = None) -> str | None:
    """What is visibly wrong with our certificate: expired, not yet valid, listed in a CRL
    next to it (``*.crl`` in its directory), or not issued by ``ca_file``'s CA chain."""
    try:
        certs = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError):
        return None
    if not certs:
        return None
    leaf = certs[0]
    now = datetime.now(UTC)
    if leaf.not_valid_after_utc < now:
        return f"it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if leaf.not_valid_before_utc > now:
        return f"it is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    for crl_file in sorted(cert_file.parent.glob("*.crl")):
        try:
            data = crl_file.read_bytes()
            crl = (
                x509.load_pem_x509_crl(data)
                if data.lstrip().startswith(b"-----")
                else x509.load_der_x509_crl(data)
            )
        except (OSError, ValueError):
            continue
        if crl.issuer == leaf.issuer and crl.get_revoked_certificate_by_serial_number(
            leaf.serial_number
        ):
            return f"it is revoked (listed in {crl_file.name})"
    if ca_file is not None:
        untrusted = _untrusted_root(certs, cert_file.parent, ca_file)
        if untrusted is not None:
            return f"it chains to {untrusted}, which {ca_file.name} does not trust (untrusted)"
    return None


def _load_all(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return []


def _untrusted_root(certs: list[x509.Certificate], directory: Path, ca_file: Path) -> str | None:
    """The name of the self-signed root our chain ends in, when ``ca_file`` does not hold
    it; None when trusted or when the chain cannot be followed with the certificates at
    hand (the cert file, ``ca_file`` and ``*.pem``/``*.crt`` next to the certificate)."""
    trusted = {c.subject for c in _load_all(ca_file)}
    if not trusted:
        return None
    pool = {c.subject: c for c in certs}
    for path in sorted([*directory.glob("*.pem"), *directory.glob("*.crt")]):
        for c in _load_all(path):
            pool.setdefault(c.subject, c)
    current = certs[0]
    for _ in range(8):
        if current.issuer in trusted:
            return None
        issuer = pool.get(current.issuer)
        if issuer is None:
            return None  # cannot tell
        if issuer.issuer == issuer.subject:
            return issuer.subject.rfc4514_string()
        current = issuer
    return None


def diagnose(
    exc: BaseException, cert_file: Path, ca_file: Path | None = None
) -> CertificateRefused | None:
    """A :class:`CertificateRefused` when ``exc`` looks like the gateway refusing our
    certificate during or right after the TLS handshake; None otherwise."""
    alert = alert_of(exc)
    if alert is not None:
        why = ALERTS[alert]
        if alert == "HANDSHAKE_FAILURE":
            why = local_problem(cert_file, ca_file) or why
        return CertificateRefused(
            f"the gateway refused the certificate {cert_file.name}: {why} "
            f"(TLS alert {alert.lower()})",
            alert,
        )
    if not _closed_by_peer(exc):
        return None
    seen = local_problem(cert_file, ca_file)
    if seen is not None:
        return CertificateRefused(
            f"the gateway refused the certificate {cert_file.name}: {seen} (it closed the "
            "connection during the TLS handshake)"
        )
    return CertificateRefused(
        f"the gateway closed the connection during the TLS handshake: it most likely "
        f"refused the certificate {cert_file.name} (revoked, expired or from a CA it does "
        "not trust; it sent no reason)"
    )
