"""TLS contexts for two-way TLS (the WUS security profile: client certificate, TLS 1.2+).

The server context rejects untrusted, expired and (with a CRL) revoked client
certificates in the handshake, so such clients never reach the application. The
application then reads the identity with :func:`peer_certificate` and
``CertificateVerifier`` (which needs the intermediates file: Python's ``ssl`` exposes
only the peer's leaf certificate).

CRL updates: OpenSSL prefers the newest valid CRL of an issuer, so
:func:`refresh_crl` can add a re-issued CRL to a live context without a restart.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import NoReturn

from cryptography import x509

__all__ = [
    "TLSConfigError",
    "client_ssl_context",
    "peer_certificate",
    "refresh_crl",
    "server_ssl_context",
]

# TLS 1.2 suites with forward secrecy and AEAD only (TLS 1.3 suites are always AEAD).
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:!aNULL:!eNULL:!aDSS:!SHA1"


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
