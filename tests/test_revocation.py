"""Live revocation: the dev PKI's responder (CRLs over HTTP, OCSP), ``digipoort dev revoke``,
and every port and the deliverer's peer check refusing a certificate revoked while the
gateway runs — with no local CRL files, so everything comes over HTTP.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID
from prometheus_client import REGISTRY

from adapters.wus.afleverserver import AfleverServer
from digipoort.cli import main as cli
from digipoort.devenv import BELASTINGDIENST, BETA, SAMPLE_PARTICIPANTS
from digipoort.pki import (
    CertificateRejected,
    CertificateVerifier,
    client_ssl_context,
    server_ssl_context,
)
from digipoort.pki.devpki import DevParticipant, create_dev_pki, revoke
from digipoort.pki.responder import ocsp_response, start_responder
from digipoort.pki.revocation import RevocationService, cdp_urls, ocsp_urls
from digipoort.pki.wiring import PeerCheck, client_context, participant_verifier
from routing.afleveren.deliverer import DeliveryFailed
from routing.afleveren.wus import AfleverClient
from routing.fetcher import FetchFailed, ReferenceFetcher
from routing.grote_berichten import Reference
from tests.support import Env, create_env, destroy_env, free_port, wait_for
from tests.test_smtp_relay import COMPONENTS as RELAY_COMPONENTS
from tests.test_smtp_relay import Mta, codes, fast_retries, make_smtp_recipient, submit
from tests.test_tls_ports import (
    client,
    probe_ftps_control,
    probe_grote_berichten,
    probe_pop3,
    probe_smtp,
    probe_wus,
)

COMPONENTS = ("intake", "validator", "router", "wus", "smtp", "pop3", "ftp")

#: port -> (probe, what a good certificate gets)
PORTS: dict[str, tuple[Callable[[Env, ssl.SSLContext, str], str], str]] = {
    "wus": (probe_wus, "http"),
    "grote_berichten": (probe_grote_berichten, "http 404"),
    "smtp": (probe_smtp, "smtp 250"),
    "pop3": (probe_pop3, "+OK"),
    "ftps": (probe_ftps_control, "230"),
}


def make_pki(directory: Path, port: int) -> Path:
    participants = [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS]
    create_dev_pki(directory, participants, revocation_url=f"http://127.0.0.1:{port}")
    return directory


async def revocation_env(
    tmp: Path, template_db: str, *, unknown_status: str = "fail_closed"
) -> tuple[Env, int]:
    port = free_port()
    pki = make_pki(tmp / "pki", port)
    env = await create_env(tmp, pki, template_db)
    rev = env.settings.pki
    rev.crl_files = []  # only what the responder serves
    rev.revocation.refresh_seconds = 0.5
    rev.revocation.timeout_seconds = 2.0
    rev.revocation.unknown_status = unknown_status  # type: ignore[assignment]
    return env, port


@pytest_asyncio.fixture(loop_scope="session")
async def live(tmp_path: Path, template_db: str) -> AsyncIterator[tuple[Env, int]]:
    env, port = await revocation_env(tmp_path, template_db)
    responder = await start_responder(env.pki, "127.0.0.1", port, ocsp_validity=2)
    try:
        yield env, port
    finally:
        await destroy_env(env)
        await responder.cleanup()


def beta(env: Env) -> ssl.SSLContext:
    return client(env.pki, env.pki / f"{BETA}.crt", env.pki / f"{BETA}.key")


async def attempt(env: Env, port: str) -> str:
    probe, _ = PORTS[port]
    try:
        return await asyncio.to_thread(probe, env, beta(env), BETA)
    except ssl.SSLError as exc:
        return f"tls {exc.reason}"
    except Exception as exc:  # smtplib/ftplib wrap the TLS alert of their first read
        return f"refused {exc!r}"


async def deliver_to_beta(env: Env, url: str) -> str:
    s = env.settings
    aflever = AfleverClient(
        s.resolve(s.pki.cert_file),
        s.resolve(s.pki.key_file),
        s.resolve(s.pki.ca_file),
        participant_verifier(s),
        timeout=5,
        ssl_context=client_context(s),
        peer_check=PeerCheck(s),
    )
    try:
        await aflever.afleveren(url, BETA, uuid.uuid4(), b"<x/>")
    except DeliveryFailed as exc:
        return str(exc)
    finally:
        await aflever.close()
    return "delivered"


async def test_revoked_while_running_is_refused_everywhere(
    live: tuple[Env, int], tmp_path: Path
) -> None:
    env, _ = live
    await env.start_gateway(components=COMPONENTS)
    recipient = AfleverServer(
        env.pki / f"{BETA}.crt", env.pki / f"{BETA}.key", env.pki / "ca.crt",
        tmp_path / "in", env.pki / "chain.pem",
    )  # fmt: skip
    aflever_port = free_port()
    await recipient.start("127.0.0.1", aflever_port)
    url = f"https://localhost:{aflever_port}/afleverservice"
    try:
        for port, (_, good) in PORTS.items():
            got = await attempt(env, port)
            assert got.startswith(good), (port, got)
        # the recipient answers (a fault for this non-request), so its certificate passed
        assert "afgewezen" not in await deliver_to_beta(env, url)

        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["dev", "revoke", "--pki-dir", str(env.pki), BETA]
        )
        assert result.exit_code == 0, result.output

        for port, (_, good) in PORTS.items():

            async def refused(port: str = port, good: str = good) -> str | None:
                got = await attempt(env, port)
                return None if got.startswith(good) else got

            got = await wait_for(refused, timeout=15, what=f"{port} refusing Beta")
            assert "revoked" in got.lower(), (port, got)

        async def delivery_refused() -> str | None:
            got = await deliver_to_beta(env, url)
            return got if "afgewezen" in got or "mislukt" in got else None

        await wait_for(delivery_refused, timeout=15, what="deliverer refusing Beta")
    finally:
        await recipient.stop()


@pytest.mark.parametrize("unknown_status", ["fail_closed", "soft_fail"])
async def test_responder_down(tmp_path: Path, template_db: str, unknown_status: str) -> None:
    """No CRL and no OCSP answer obtainable: refused (default) or accepted (soft-fail)."""
    env, _ = await revocation_env(tmp_path, template_db, unknown_status=unknown_status)
    before = REGISTRY.get_sample_value("digipoort_revocation_soft_fail_total") or 0
    try:
        await env.start_gateway(components=("intake", "wus", "pop3"))
        wus, pop3 = await attempt(env, "wus"), await attempt(env, "pop3")
        if unknown_status == "fail_closed":
            assert wus.startswith("tls") or wus.startswith("refused"), wus
            assert pop3.startswith("-ERR"), pop3
        else:
            assert wus.startswith("http"), wus
            assert pop3.startswith("+OK"), pop3
            after = REGISTRY.get_sample_value("digipoort_revocation_soft_fail_total") or 0
            assert after > before
    finally:
        await destroy_env(env)


# -- the service and the responder, without a gateway --------------------------------


def _certs(pki: Path, stem: str) -> tuple[x509.Certificate, x509.Certificate]:
    leaf = x509.load_pem_x509_certificates((pki / f"{stem}.crt").read_bytes())[0]
    inter = x509.load_pem_x509_certificates((pki / "intermediate.crt").read_bytes())[0]
    return leaf, inter


def test_dev_certificates_name_the_responder(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", 1234)
    leaf, inter = _certs(pki, BETA)
    assert cdp_urls(leaf) == ["http://127.0.0.1:1234/crl/ca.crl"]
    assert ocsp_urls(leaf) == ["http://127.0.0.1:1234/ocsp/intermediate"]
    assert cdp_urls(inter) == ["http://127.0.0.1:1234/crl/root.crl"]
    # re-running keeps the certificates (idempotent); another URL re-issues them
    participants = [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS]
    assert create_dev_pki(pki, participants, revocation_url="http://127.0.0.1:1234") == []
    written = create_dev_pki(pki, participants, revocation_url="http://127.0.0.1:4321")
    assert pki / f"{BETA}.crt" in written and pki / "intermediate.crt" in written
    assert not [p for p in written if p.suffix == ".key"]  # same keys
    assert cdp_urls(_certs(pki, BETA)[0]) == ["http://127.0.0.1:4321/crl/ca.crl"]


def test_ocsp_answer_follows_the_crl(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", 1234)
    leaf, inter = _certs(pki, BETA)
    request = (
        ocsp.OCSPRequestBuilder()
        .add_certificate(leaf, inter, hashes.SHA256())
        .build()
        .public_bytes(serialization.Encoding.DER)
    )

    def status() -> ocsp.OCSPCertStatus:
        answer = ocsp.load_der_ocsp_response(
            ocsp_response(pki, "intermediate", request, timedelta(seconds=60))
        )
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        return answer.certificate_status

    assert status() == ocsp.OCSPCertStatus.GOOD
    revoke(pki, BETA)
    assert status() == ocsp.OCSPCertStatus.REVOKED
    bad = ocsp.load_der_ocsp_response(ocsp_response(pki, "intermediate", b"junk", timedelta(1)))
    assert bad.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


async def test_service_fetches_crls_and_ocsp_and_refreshes(tmp_path: Path) -> None:
    port = free_port()
    pki = make_pki(tmp_path / "pki", port)
    leaf, inter = _certs(pki, BETA)
    root = x509.load_pem_x509_certificates((pki / "ca.crt").read_bytes())[0]
    responder = await start_responder(pki, "127.0.0.1", port, ocsp_validity=60)
    service = RevocationService(refresh_seconds=0.3, timeout_seconds=2, seeds=[inter])
    try:
        await service.start()
        assert service.status(inter, root).state == "good"  # the seed's CDP, at start
        await service.prepare(leaf, inter)
        assert service.status(leaf, inter).state == "good"

        async def ocsp_cached() -> bool:
            return bool(service._ocsp)

        await wait_for(ocsp_cached, timeout=10, what="an OCSP answer")
        revoke(pki, BETA)

        async def revoked() -> bool:
            return service.status(leaf, inter).state == "revoked"

        await wait_for(revoked, timeout=10, what="the re-issued CRL")
    finally:
        await service.stop()
        await responder.cleanup()


def crl_listing(
    path: Path,
    issuer: x509.Name,
    key: rsa.RSAPrivateKey,
    cert: x509.Certificate,
    *,
    newer: bool = False,
) -> Path:
    """Write a CRL of ``issuer`` signed by ``key`` that lists ``cert``; newer: dated
    a few seconds ahead, so it outranks a CRL issued now."""
    now = datetime.now(UTC) + timedelta(seconds=5 if newer else 0)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now)
            .build()
        )
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_revoked_intermediate_refuses_its_leaves(tmp_path: Path) -> None:
    """Intermediates are checked too: the root's CRL lists the issuing CA."""
    pki = make_pki(tmp_path / "pki", 1234)
    leaf, inter = _certs(pki, BETA)
    root = x509.load_pem_x509_certificates((pki / "ca.crt").read_bytes())[0]
    root_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    assert isinstance(root_key, rsa.RSAPrivateKey)

    def verifier(*crl_files: Path) -> CertificateVerifier:
        service = RevocationService(crl_files=crl_files, fetch=False)
        return CertificateVerifier(
            [root], intermediates=[inter], require_crl=True, revocation=service
        )

    # the intermediate names a CDP: without any root CRL its status is unknown
    with pytest.raises(CertificateRejected) as unknown:
        verifier(pki / "ca.crl").verify(leaf)
    assert unknown.value.reason == "crl_unavailable" and "issuing CA" in unknown.value.detail
    assert verifier(pki / "ca.crl", pki / "root.crl").verify(leaf).oin == BETA

    path = crl_listing(tmp_path / "root-revoking.crl", root.subject, root_key, inter)
    with pytest.raises(CertificateRejected) as revoked:
        verifier(pki / "ca.crl", path).verify(leaf)
    assert revoked.value.reason == "revoked" and "issuing CA" in revoked.value.detail


async def test_dev_pki_server_command_serves_crl_and_ocsp(tmp_path: Path) -> None:
    """`digipoort dev pki-server` as a real process; `dev revoke` changes what it serves."""
    port = free_port()
    pki = make_pki(tmp_path / "pki", port)
    leaf, inter = _certs(pki, BETA)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "digipoort.cli", "dev", "pki-server",
        "--pki-dir", str(pki), "--port", str(port), "--ocsp-validity", "5",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        service = RevocationService(refresh_seconds=0.3, timeout_seconds=2)
        await service.start()

        async def answered() -> bool:
            await service.prepare(leaf, inter)
            return service.status(leaf, inter).state == "good"

        await wait_for(answered, timeout=20, what="the pki-server's CRL")
        result = await asyncio.to_thread(
            CliRunner().invoke, cli, ["dev", "revoke", "--pki-dir", str(pki), BETA]
        )
        assert result.exit_code == 0 and "revoked" in result.output, result.output

        async def revoked() -> bool:
            return service.status(leaf, inter).state == "revoked"

        await wait_for(revoked, timeout=10, what="the re-issued CRL over HTTP")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/crl/nothing.crl") as missing:
                assert missing.status == 404
        await service.stop()
        bad = await asyncio.to_thread(
            CliRunner().invoke, cli, ["dev", "revoke", "--pki-dir", str(pki), "../etc"]
        )
        assert bad.exit_code != 0
    finally:
        process.terminate()
        await process.wait()


def test_only_crls_of_the_configured_cas_reach_the_handshake(tmp_path: Path) -> None:
    """A CRL under the intermediate's name but signed by another key (say, another dev
    PKI's responder on the same port) is neither believed nor put into SSL contexts."""
    pki = make_pki(tmp_path / "pki", 1234)
    leaf, inter = _certs(pki, BETA)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = crl_listing(tmp_path / "foreign.crl", inter.subject, stranger, leaf, newer=True)
    service = RevocationService(crl_files=[path, pki / "ca.crl"], fetch=False, issuers=[inter])
    assert service.status(leaf, inter).state == "good"
    chosen = service._for_contexts()
    assert chosen and all(crl.is_signature_valid(inter.public_key()) for crl in chosen)  # type: ignore[arg-type]


async def test_relay_refuses_an_mta_with_a_revoked_certificate(env: Env) -> None:
    """The SMTP relay's peer check: an MTA presenting a revoked certificate gets no mail."""
    port = free_port()
    await make_smtp_recipient(env, BELASTINGDIENST, port)
    fast_retries(env)
    mta = await Mta(env, port, cert="revoked").start()
    try:
        gw = await env.start_gateway(components=RELAY_COMPONENTS)
        (kenmerk,) = await submit(gw)

        async def failed_twice() -> bool:
            return (await codes(env, kenmerk)).count("420") >= 2

        await wait_for(failed_twice, timeout=30, what="two failed attempts")
        failed = [s for s in await env.history(kenmerk) if s.code == "420"]
        assert all("revoked" in (s.details or "").lower() for s in failed), [
            s.details for s in failed
        ]
        assert not mta.recorder.mails
    finally:
        await mta.stop()


async def test_grote_berichten_fetcher_refuses_a_revoked_server(env: Env, tmp_path: Path) -> None:
    """The fetcher's peer check runs on each new connection, before the request."""
    pki, served = env.pki, []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.Response(body=b"x")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    context = server_ssl_context(pki / "revoked.crt", pki / "revoked.key", pki / "ca.crt",
                                 require_client_cert=False)  # fmt: skip
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    now = datetime.now(UTC)
    ref = Reference("c", f"https://localhost:{port}/doc", "doc.bin", "application/octet-stream",
                    1, "0" * 64, now, now + timedelta(days=1))  # fmt: skip
    # chain and host name alone would accept the server: only the peer check refuses it
    plain = client_ssl_context(pki / f"{BETA}.crt", pki / f"{BETA}.key", pki / "ca.crt")
    fetcher = ReferenceFetcher(plain, attempts=1, peer_check=PeerCheck(env.settings))
    try:
        with pytest.raises(FetchFailed, match="revoked"):
            await fetcher.fetch(ref, tmp_path / "doc.part")
        assert served == []
    finally:
        await runner.cleanup()


async def test_ocsp_alone_decides_for_a_certificate_without_a_cdp(tmp_path: Path) -> None:
    """A certificate that names only an OCSP responder: good, then revoked, from OCSP."""
    port = free_port()
    pki = make_pki(tmp_path / "pki", port)
    _, inter = _certs(pki, BETA)
    inter_key = serialization.load_pem_private_key((pki / "intermediate.key").read_bytes(), None)
    assert isinstance(inter_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    aia = x509.AuthorityInformationAccess([x509.AccessDescription(
        AuthorityInformationAccessOID.OCSP,
        x509.UniformResourceIdentifier(f"http://127.0.0.1:{port}/ocsp/intermediate"),
    )])  # fmt: skip
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, BETA)]))
        .issuer_name(inter.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(aia, critical=False)
        .sign(inter_key, hashes.SHA256())
    )
    (pki / "ocsp-only.crt").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    assert cdp_urls(leaf) == [] and ocsp_urls(leaf)
    responder = await start_responder(pki, "127.0.0.1", port, ocsp_validity=1)
    service = RevocationService(refresh_seconds=0.3, timeout_seconds=2)
    try:
        await service.start()
        assert service.status(leaf, inter).state == "unknown"
        await service.prepare(leaf, inter)
        good = service.status(leaf, inter)
        assert (good.state, good.source) == ("good", "ocsp")
        revoke(pki, "ocsp-only")

        async def revoked() -> bool:
            status = service.status(leaf, inter)
            return status.state == "revoked" and status.source == "ocsp"

        await wait_for(revoked, timeout=10, what="a revoked OCSP answer")
    finally:
        await service.stop()
        await responder.cleanup()
