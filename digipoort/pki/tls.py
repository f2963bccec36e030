"""TLS contexts for two-way TLS (the WUS security profile: client certificate, TLS 1.2+).

The server context rejects untrusted, expired and (with a CRL) revoked client
certificates in the handshake, so such clients never reach the application. The
application then reads the identity with :func:`peer_certificate` and
``CertificateVerifier`` (which needs the intermediates file: Python's ``ssl`` exposes
only the peer's leaf certificate).

CRL updates: OpenSSL prefers the newest valid CRL of an issuer, so
:func:`refresh_crl` can add a re-issued CRL to a live context without a restart.

Refused handshakes: asyncio's SSL protocol (CPython 3.11+, ``asyncio.sslproto``) drops
the alert OpenSSL wrote when a handshake fails — it aborts the transport without
flushing the outgoing buffer, so clients see "unexpected EOF" / "Empty reply" instead of
"unknown CA" or "certificate required". :func:`install_handshake_alerts` (called by
:func:`label_context`) flushes that alert first, and logs and counts the refusal per
port (``tls.handshake_refused``, ``digipoort_tls_handshake_refused_total``).
"""

from __future__ import annotations

import asyncio.sslproto
import contextlib
import ssl
from pathlib import Path
from typing import Any, NoReturn
from weakref import WeakKeyDictionary

import structlog
from cryptography import x509
from prometheus_client import Counter

__all__ = [
    "TLSConfigError",
    "client_ssl_context",
    "install_handshake_alerts",
    "label_context",
    "peer_certificate",
    "refresh_crl",
    "server_ssl_context",
]

log = structlog.get_logger(__name__)

# TLS 1.2: ECDHE with AES-GCM or ChaCha20-Poly1305 only (NCSC-NL "good"); no DHE (no
# ffdhe groups are configured, and NCSC-NL rates DHE "sufficient" at best). TLS 1.3
# suites (all AEAD) and groups are OpenSSL's defaults (Python 3.11 cannot set groups).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL:!aDSS:!SHA1:!DHE"

HANDSHAKE_REFUSED = Counter(
    "digipoort_tls_handshake_refused_total",
    "TLS handshakes refused by a server port, by reason",
    ["port", "reason"],
)

_PROTOCOL_MISMATCH = frozenset({
    "NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE",
    "WRONG_VERSION_NUMBER", "VERSION_TOO_LOW", "NO_SUITABLE_SIGNATURE_ALGORITHM",
})  # fmt: skip

_LABELS: WeakKeyDictionary[ssl.SSLContext, str] = WeakKeyDictionary()

# X509_V_ERR_* codes -> reason label
_VERIFY_REASONS = {
    2: "untrusted",  # unable to get issuer certificate
    3: "crl_unavailable",  # unable to get certificate CRL
    9: "not_yet_valid",
    10: "expired",
    12: "crl_unavailable",  # CRL has expired
    18: "untrusted",  # self-signed leaf
    19: "untrusted",  # self-signed in chain
    20: "untrusted",  # unable to get local issuer certificate
    21: "untrusted",  # unable to verify the first certificate
    23: "revoked",
}


class TLSConfigError(Exception):
    """A certificate, key, CA or CRL file could not be loaded. Names files, never contents."""


def server_ssl_context(
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    crl_file: Path | None = None,
    *,
    require_client_cert: bool = True,
    intermediates_file: Path | None = None,
) -> ssl.SSLContext:
    """A server context; client certificates chain to ca_file and are checked against crl_file.

    Without require_client_cert a client certificate is optional, but one that is sent
    must still verify. With crl_file every client's issuing CA needs a CRL in that file.

    intermediates_file (PEM, the issuing CAs below the roots) lets the server build the
    chain itself, so clients that send only their leaf certificate (most do) verify.
    OpenSSL still requires every chain to end at a self-signed root of ca_file: an
    intermediate is a link, never an anchor on its own.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_identity(context, cert_file, key_file)
    _load_trust(context, ca_file)
    if intermediates_file is not None and intermediates_file.exists():
        _load_trust(context, intermediates_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    if crl_file is not None:
        refresh_crl(context, crl_file)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def client_ssl_context(
    cert_file: Path | None, key_file: Path | None, ca_file: Path
) -> ssl.SSLContext:
    """A client context verifying the server (chain and host name) against ca_file.

    cert_file (leaf followed by its intermediates) is presented when given; key_file
    may be None when the key is in cert_file.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    _harden(context)
    if cert_file is not None:
        _load_identity(context, cert_file, key_file)
    elif key_file is not None:
        raise TLSConfigError("a key file was given without a certificate file")
    _load_trust(context, ca_file)
    return context


def label_context(context: ssl.SSLContext, port: str) -> None:
    """Name the port a server context serves (for refusal logs and metrics)."""
    _LABELS[context] = port
    install_handshake_alerts()


def handshake_refusal_reason(exc: BaseException) -> str:
    """A bounded label for why a handshake failed."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_REASONS.get(exc.verify_code, "bad_certificate")
    reason = getattr(exc, "reason", None) or ""
    if reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return "no_certificate"
    if reason in _PROTOCOL_MISMATCH:
        return "no_common_protocol"
    if reason.startswith(("TLSV1_ALERT", "SSLV3_ALERT", "TLSV13_ALERT")):
        return "client_alert"
    return "handshake_failed"


def _on_refused(protocol: Any, exc: BaseException) -> None:
    port = _LABELS.get(getattr(protocol, "_sslcontext", None))  # type: ignore[arg-type]
    if port is None:  # a client context or an unlabelled server
        return
    reason = handshake_refusal_reason(exc)
    HANDSHAKE_REFUSED.labels(port, reason).inc()
    transport = getattr(protocol, "_transport", None)
    peer = transport.get_extra_info("peername") if transport is not None else None
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or ""
    log.info("tls.handshake_refused", port=port, reason=reason, peer=str(peer), detail=detail)


def install_handshake_alerts() -> None:
    """Make asyncio send the TLS alert of a failed handshake before it closes (idempotent)."""
    cls: Any = asyncio.sslproto.SSLProtocol
    original = cls._on_handshake_complete
    if getattr(original, "_sends_alert", False):
        return

    def on_handshake_complete(self: Any, handshake_exc: BaseException | None) -> None:
        if handshake_exc is not None:
            with contextlib.suppress(Exception):
                self._process_outgoing()  # the alert OpenSSL put in the outgoing BIO
            with contextlib.suppress(Exception):
                _on_refused(self, handshake_exc)
        original(self, handshake_exc)

    on_handshake_complete._sends_alert = True  # type: ignore[attr-defined]
    cls._on_handshake_complete = on_handshake_complete


def refresh_crl(context: ssl.SSLContext, crl_file: Path) -> None:
    """Add the CRL(s) in crl_file to the context's store (OpenSSL uses the newest valid one)."""
    try:
        context.load_verify_locations(cafile=str(crl_file))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load CRL file {crl_file}: {_why(exc)}") from None


def peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> x509.Certificate | None:
    """The verified peer's leaf certificate, or None if it sent none.

    With asyncio: ``peer_certificate(writer.get_extra_info("ssl_object"))``.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    return x509.load_der_x509_certificate(der)


# --------------------------------------------------------------------------- helpers


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.verify_flags |= ssl.VERIFY_X509_STRICT


def _refuse_password() -> NoReturn:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise TLSConfigError("the private key is encrypted; an unencrypted key file is expected")


def _load_identity(context: ssl.SSLContext, cert_file: Path, key_file: Path | None) -> None:
    try:
        context.load_cert_chain(
            str(cert_file), str(key_file) if key_file else None, password=_refuse_password
        )
    except TLSConfigError:
        raise
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(
            f"cannot load certificate {cert_file} with key {key_file or cert_file}: {_why(exc)}"
        ) from None


def _load_trust(context: ssl.SSLContext, ca_file: Path) -> None:
    try:
        context.load_verify_locations(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise TLSConfigError(f"cannot load CA file {ca_file}: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    """A short, content-free description of a load error (OpenSSL reason or errno text)."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return type(exc).__name__
