# ruff: noqa: S321  (FTPS clients under test: ftplib is the real client here)
"""Every TLS port with real clients: leaf-only and full-chain client certificates, refused
handshakes that answer with a TLS alert (and are logged and counted per port), and the
TLS 1.2 / 1.3 suites that negotiate.

Ports: WUS and Grote Berichten (one HTTPS port), SMTP STARTTLS, POP3 STLS, FTPS control
and data. One gateway serves the whole module.
"""

from __future__ import annotations

import asyncio
import ftplib
import http.client
import poplib
import re
import smtplib
import socket
import ssl
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from prometheus_client import REGISTRY

from digipoort.devenv import ALFA
from tests.support import Env, create_env, destroy_env, wait_for

COMPONENTS = ("intake", "validator", "router", "wus", "smtp", "pop3", "ftp")
Probe = Callable[[Env, ssl.SSLContext, str], str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gw(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path, template_db: str
) -> AsyncIterator[Env]:
    env = await create_env(tmp_path_factory.mktemp("tlsports"), pki_dir, template_db)
    try:
        await env.start_gateway(components=COMPONENTS)
        yield env
    finally:
        await destroy_env(env)


def leaf_only(pki: Path, stem: str, directory: Path) -> Path:
    """A PEM file with only the leaf certificate (what most real clients send)."""
    leaf = x509.load_pem_x509_certificates((pki / f"{stem}.crt").read_bytes())[0]
    path = directory / f"{stem}-leaf.pem"
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return path


def client(pki: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


# -- one probe per port: returns what the authenticated client got ---------------------


def probe_wus(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    conn = http.client.HTTPSConnection("localhost", env.settings.wus.port, context=context)
    try:
        conn.request("GET", "/")
        return f"http {conn.getresponse().status}"
    finally:
        conn.close()


def probe_grote_berichten(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    conn = http.client.HTTPSConnection("localhost", env.settings.wus.port, context=context)
    try:  # an authenticated caller gets 404 for an unknown reference, 401 without identity
        conn.request("GET", f"/grote-berichten/{uuid.uuid4()}/1")
        return f"http {conn.getresponse().status}"
    finally:
        conn.close()


def probe_smtp(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    with smtplib.SMTP("127.0.0.1", env.settings.smtp.port, timeout=30) as smtp:
        smtp.starttls(context=context)
        smtp.ehlo()
        code, text = smtp.mail(f"{oin}@example.test")
        return f"smtp {code} {text.decode(errors='replace')}"


def probe_pop3(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    box = poplib.POP3("127.0.0.1", env.settings.pop3.port, timeout=30)
    try:
        box.stls(context=context)
        box.user(oin)
        return box.pass_("certificate").decode()[:3]
    except poplib.error_proto as exc:
        return bytes(exc.args[0]).decode()
    finally:
        box.close()


def _ftps(env: Env, context: ssl.SSLContext) -> ftplib.FTP_TLS:
    ftp = ftplib.FTP_TLS(context=context, timeout=30)
    ftp.connect("127.0.0.1", env.settings.ftp.port)
    ftp.auth()
    return ftp


def probe_ftps_control(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    ftp = _ftps(env, context)
    try:
        return ftp.login(oin, "")
    except ftplib.error_perm as exc:
        return str(exc)
    finally:
        ftp.close()


def probe_ftps_data(env: Env, context: ssl.SSLContext, oin: str = ALFA) -> str:
    ftp = _ftps(env, context)
    try:
        ftp.login(oin, "")
        ftp.prot_p()
        ftp.nlst()  # a TLS data connection with the client certificate
        return "data ok"
    finally:
        ftp.close()


PROBES: dict[str, tuple[Probe, str]] = {
    "wus": (probe_wus, "http"),
    "grote_berichten": (probe_grote_berichten, "http 404"),
    "smtp": (probe_smtp, "smtp 250"),
    "pop3": (probe_pop3, "+OK"),
    "ftps_control": (probe_ftps_control, "230"),
    "ftps_data": (probe_ftps_data, "data ok"),
}


@pytest.mark.parametrize("form", ["leaf_only", "full_chain"])
@pytest.mark.parametrize("port", sorted(PROBES))
async def test_client_certificate_accepted_on_every_port(
    gw: Env, tmp_path: Path, port: str, form: str
) -> None:
    pki = gw.pki
    cert = leaf_only(pki, ALFA, tmp_path) if form == "leaf_only" else pki / f"{ALFA}.crt"
    probe, expected = PROBES[port]
    got = await asyncio.to_thread(probe, gw, client(pki, cert, pki / f"{ALFA}.key"), ALFA)
    assert got.startswith(expected), got
    if port == "wus":
        assert not got.startswith("http 401") and not got.startswith("http 403")


# -- refused handshakes: a TLS alert, one log line, a metric -----------------------------


def refused(port: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "digipoort_tls_handshake_refused_total", {"port": port, "reason": reason}
    )
    return value or 0.0


def _handshake_error(fn: Callable[[], object]) -> str:
    try:
        fn()
    except ssl.SSLError as exc:
        return str(exc.reason)
    except (OSError, EOFError, smtplib.SMTPException, poplib.error_proto) as exc:
        # smtplib wraps the SSLError of its first read in SMTPServerDisconnected
        found = re.search(r"\[SSL: (\w+)\]", str(exc))
        return found.group(1) if found else f"no alert: {exc!r}"
    return "accepted"


# (label, the port's probe) for each port; SMTP, POP3 and FTPS ask for a certificate
# without requiring it, so only a certificate that fails the chain is refused there.
HANDSHAKE_CASES = [
    ("wus", "untrusted", "TLSV1_ALERT_UNKNOWN_CA", "untrusted"),
    ("wus", "expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "expired"),
    ("wus", "revoked", "SSLV3_ALERT_CERTIFICATE_REVOKED", "revoked"),
    ("wus", None, "TLSV13_ALERT_CERTIFICATE_REQUIRED", "no_certificate"),
    ("smtp", "untrusted", "TLSV1_ALERT_UNKNOWN_CA", "untrusted"),
    ("pop3", "expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED", "expired"),
    ("ftp", "untrusted", "TLSV1_ALERT_UNKNOWN_CA", "untrusted"),
]
_PORT_PROBE = {"wus": probe_wus, "smtp": probe_smtp, "pop3": probe_pop3,
               "ftp": probe_ftps_control}  # fmt: skip


@pytest.mark.parametrize(("port", "stem", "alert", "reason"), HANDSHAKE_CASES)
async def test_refused_handshake_sends_alert_and_is_counted(
    gw: Env, tmp_path: Path, port: str, stem: str | None, alert: str, reason: str
) -> None:
    pki = gw.pki
    cert = leaf_only(pki, stem, tmp_path) if stem else None
    context = client(pki, cert, pki / f"{stem}.key" if stem else None)
    before = refused(port, reason)
    got = await asyncio.to_thread(_handshake_error, lambda: _PORT_PROBE[port](gw, context))
    assert got == alert
    await wait_for(lambda: _async(refused(port, reason) > before), timeout=5, what="metric")


async def _async(value: bool) -> bool:
    return value


async def test_openssl_s_client_sees_the_alert(gw: Env, tmp_path: Path) -> None:
    """A client that is not Python: openssl s_client reports the server's alert."""
    pki = gw.pki
    result = await asyncio.to_thread(
        subprocess.run,
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{gw.settings.wus.port}",
            "-CAfile",
            str(pki / "ca.crt"),
            "-cert",
            str(leaf_only(pki, "untrusted", tmp_path)),
            "-key",
            str(pki / "untrusted.key"),
            "-tls1_3",
            "-ign_eof",  # wait for the server instead of leaving at end of input
        ],
        input=b"GET / HTTP/1.0\r\n\r\n",
        capture_output=True,
        timeout=30,
        check=False,
    )
    output = (result.stdout + result.stderr).decode(errors="replace")
    assert "alert unknown ca" in output, output[-2000:]


# -- suites ------------------------------------------------------------------------------


def _negotiate(env: Env, cipher: str | None, version: ssl.TLSVersion) -> str:
    pki = env.pki
    context = client(pki, pki / f"{ALFA}.crt", pki / f"{ALFA}.key")
    context.minimum_version = context.maximum_version = version
    if cipher is not None:
        context.set_ciphers(cipher)
    try:
        with (
            socket.create_connection(("127.0.0.1", env.settings.wus.port), timeout=10) as sock,
            context.wrap_socket(sock, server_hostname="localhost") as tls,
        ):
            negotiated = tls.cipher()
            return negotiated[0] if negotiated else "none"
    except ssl.SSLError as exc:
        return f"refused: {exc.reason}"


@pytest.mark.parametrize(
    ("cipher", "version", "accepted"),
    [
        ("ECDHE-RSA-AES256-GCM-SHA384", ssl.TLSVersion.TLSv1_2, True),
        ("ECDHE-RSA-AES128-GCM-SHA256", ssl.TLSVersion.TLSv1_2, True),
        ("ECDHE-RSA-CHACHA20-POLY1305", ssl.TLSVersion.TLSv1_2, True),
        ("DHE-RSA-AES256-GCM-SHA384", ssl.TLSVersion.TLSv1_2, False),
        ("AES256-GCM-SHA384", ssl.TLSVersion.TLSv1_2, False),  # no forward secrecy
        ("ECDHE-RSA-AES128-SHA256", ssl.TLSVersion.TLSv1_2, False),  # CBC
        ("ECDHE-RSA-AES256-SHA", ssl.TLSVersion.TLSv1_2, False),  # CBC, SHA-1
        (None, ssl.TLSVersion.TLSv1_3, True),
    ],
)
async def test_suites_that_negotiate(
    gw: Env, cipher: str | None, version: ssl.TLSVersion, accepted: bool
) -> None:
    got = await asyncio.to_thread(_negotiate, gw, cipher, version)
    if accepted:
        assert not got.startswith("refused"), got
        assert cipher is None or got == cipher
        assert cipher is not None or got.startswith("TLS_")
    else:
        assert got.startswith("refused"), got


async def test_tls_1_1_refused(gw: Env) -> None:
    def go() -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
            context.set_ciphers("ALL:@SECLEVEL=0")
        except (ValueError, ssl.SSLError):
            return "client cannot offer TLS 1.1"
        try:
            with (
                socket.create_connection(("127.0.0.1", gw.settings.wus.port), timeout=10) as sock,
                context.wrap_socket(sock) as tls,
            ):
                return f"accepted {tls.version()}"
        except (ssl.SSLError, OSError) as exc:
            return f"refused {exc!r}"

    assert not (await asyncio.to_thread(go)).startswith("accepted")


def _certificate_without_oin(pki: Path, directory: Path) -> tuple[Path, Path]:
    """A leaf from the trusted intermediate whose subject carries no OIN."""
    issuer = x509.load_pem_x509_certificates((pki / "intermediate.crt").read_bytes())[0]
    issuer_key = serialization.load_pem_private_key((pki / "intermediate.key").read_bytes(), None)
    assert isinstance(issuer_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Zonder OIN")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        .sign(issuer_key, hashes.SHA256())
    )
    cert_path, key_path = directory / "no-oin.crt", directory / "no-oin.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def rejected(port: str, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "digipoort_certificate_rejected_total", {"port": port, "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(("port", "probe"), [("smtp", probe_smtp), ("pop3", probe_pop3),
                                             ("ftp", probe_ftps_control)])  # fmt: skip
async def test_certificate_without_oin_refused_and_counted(
    gw: Env, tmp_path: Path, port: str, probe: Probe
) -> None:
    cert, key = _certificate_without_oin(gw.pki, tmp_path)
    before = rejected(port, "no_oin")
    got = await asyncio.to_thread(probe, gw, client(gw.pki, cert, key), ALFA)
    assert got.split()[0] in ("smtp", "-ERR", "530") and "250" not in got and "+OK" not in got
    assert rejected(port, "no_oin") > before, got
