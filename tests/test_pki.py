"""Tests for digipoort.pki: the dev PKI, the certificate verifier and the TLS contexts."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from digipoort.pki import (
    ALFA,
    GATEWAY_OIN,
    CertificateRejected,
    CertificateVerifier,
    DevParticipant,
    TLSConfigError,
    client_ssl_context,
    create_dev_pki,
    is_valid_oin,
    oin_from_certificate,
    peer_certificate,
    refresh_crl,
    server_ssl_context,
)

BELASTINGDIENST = DevParticipant("00000099200000010000", "Belastingdienst (test)")
CBS = DevParticipant("00000099200000020000", "Centraal Bureau voor de Statistiek (test)")
PARTICIPANTS = (ALFA, BELASTINGDIENST, CBS)
NEGATIVE = ("revoked", "expired", "untrusted")
END_ENTITIES = ("server", "operator", *NEGATIVE, *(p.oin for p in PARTICIPANTS))


# --------------------------------------------------------------------------- helpers


def certs_in(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def leaf(pki: Path, stem: str) -> x509.Certificate:
    return certs_in(pki / f"{stem}.crt")[0]


def private_key(path: Path) -> rsa.RSAPrivateKey:
    data = path.read_bytes()
    key = serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=True)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def copy_pki(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, copy_function=shutil.copy2)
    return target


def issue_leaf(
    pki: Path,
    subject: x509.Name,
    *,
    eku: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
) -> x509.Certificate:
    """A certificate from the dev intermediate with a chosen subject and EKU."""
    issuer = certs_in(pki / "intermediate.crt")[0]
    issuer_key = private_key(pki / "intermediate.key")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
        .sign(issuer_key, hashes.SHA256())
    )


def write_crl(
    pki: Path,
    target: Path,
    *,
    revoked_serials: tuple[int, ...] = (),
    next_update: timedelta = timedelta(days=30),
    issued_ago: timedelta = timedelta(0),
    signer: rsa.RSAPrivateKey | None = None,
) -> None:
    """A CRL for the dev intermediate (optionally signed by the wrong key).

    next_update and issued_ago are relative to now; a negative next_update makes it stale.
    """
    issuer = certs_in(pki / "intermediate.crt")[0]
    now = datetime.now(UTC)
    last_update = min(now - issued_ago, now + next_update - timedelta(days=30))
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(last_update)
        .next_update(now + next_update)
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(days=1))
            .build()
        )
    key = signer or private_key(pki / "intermediate.key")
    crl = builder.sign(key, hashes.SHA256())
    target.write_bytes(crl.public_bytes(serialization.Encoding.PEM))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    create_dev_pki(directory, PARTICIPANTS)
    return directory


@pytest.fixture(scope="module")
def verifier(pki: Path) -> CertificateVerifier:
    return CertificateVerifier.from_files(pki / "ca.crt", [pki / "ca.crl"], pki / "chain.pem")


# --------------------------------------------------------------------------- dev PKI


def test_dev_pki_writes_every_file_with_private_keys_0600(pki: Path) -> None:
    stems = {"ca", "intermediate", "untrusted-ca", *END_ENTITIES}
    expected = {f"{s}.crt" for s in stems} | {f"{s}.key" for s in stems}
    assert {p.name for p in pki.iterdir()} == expected | {"ca.crl", "root.crl", "chain.pem"}
    for key_file in pki.glob("*.key"):
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600, key_file.name
        key = private_key(key_file)
        assert key.key_size == 2048


def test_subject_serial_number_carries_the_oin(pki: Path) -> None:
    for participant in PARTICIPANTS:
        cert = leaf(pki, participant.oin)
        assert oin_from_certificate(cert) == participant.oin
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == participant.name
        assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == (
            participant.name
        )
        assert cert.subject.get_attributes_for_oid(NameOID.COUNTRY_NAME)[0].value == "NL"
    assert oin_from_certificate(leaf(pki, "server")) == GATEWAY_OIN
    for stem in NEGATIVE:
        assert oin_from_certificate(leaf(pki, stem)) == ALFA.oin


def test_server_certificate_names_and_usages(pki: Path) -> None:
    cert = leaf(pki, "server")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    participant = leaf(pki, ALFA.oin)
    usage = participant.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment and not usage.key_cert_sign


def test_files_carry_the_chain(pki: Path) -> None:
    [root] = certs_in(pki / "ca.crt")
    [intermediate] = certs_in(pki / "intermediate.crt")
    assert certs_in(pki / "chain.pem") == [intermediate, root]
    root.verify_directly_issued_by(root)
    intermediate.verify_directly_issued_by(root)
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    for stem in ("server", "revoked", "expired", *(p.oin for p in PARTICIPANTS)):
        certs = certs_in(pki / f"{stem}.crt")
        assert certs[1:] == [intermediate], stem
        certs[0].verify_directly_issued_by(intermediate)
    untrusted, untrusted_ca = certs_in(pki / "untrusted.crt")
    assert certs_in(pki / "untrusted-ca.crt") == [untrusted_ca]
    untrusted.verify_directly_issued_by(untrusted_ca)
    assert untrusted_ca != root


def test_crl_lists_the_revoked_certificate(pki: Path) -> None:
    crl = x509.load_pem_x509_crl((pki / "ca.crl").read_bytes())
    intermediate = certs_in(pki / "intermediate.crt")[0]
    assert crl.issuer == intermediate.subject
    assert crl.is_signature_valid(intermediate.public_key())  # type: ignore[arg-type]
    assert [entry.serial_number for entry in crl] == [leaf(pki, "revoked").serial_number]
    assert crl.next_update_utc is not None
    lifetime = crl.next_update_utc - crl.last_update_utc
    assert lifetime == timedelta(days=30)
    assert abs(crl.last_update_utc - datetime.now(UTC)) < timedelta(hours=1)


def test_expired_certificate_lies_entirely_in_the_past(pki: Path) -> None:
    cert = leaf(pki, "expired")
    assert cert.not_valid_after_utc < datetime.now(UTC)
    assert leaf(pki, "revoked").serial_number != leaf(pki, ALFA.oin).serial_number


def test_rerun_is_idempotent(pki: Path, tmp_path: Path) -> None:
    directory = copy_pki(pki, tmp_path / "pki")
    before = snapshot(directory)
    assert create_dev_pki(directory, PARTICIPANTS) == []
    assert snapshot(directory) == before


def test_rerun_adds_missing_files_from_existing_keys(pki: Path, tmp_path: Path) -> None:
    directory = copy_pki(pki, tmp_path / "pki")
    before = snapshot(directory)
    (directory / f"{CBS.oin}.crt").unlink()
    newcomer = DevParticipant("00000099200000030000", "Kamer van Koophandel (test)")
    written = create_dev_pki(directory, [*PARTICIPANTS, newcomer])
    assert {p.name for p in written} == {
        f"{CBS.oin}.crt",
        f"{newcomer.oin}.crt",
        f"{newcomer.oin}.key",
    }
    after = snapshot(directory)
    for name, data in before.items():
        if name.endswith(".key") or name != f"{CBS.oin}.crt":
            assert after[name] == data, name
    verifier = CertificateVerifier.from_files(directory / "ca.crt", [directory / "ca.crl"])
    for participant in (CBS, newcomer):
        certs = certs_in(directory / f"{participant.oin}.crt")
        assert verifier.verify(certs[0], certs[1:]).oin == participant.oin
    cbs_key = private_key(directory / f"{CBS.oin}.key").public_key()
    assert certs_in(directory / f"{CBS.oin}.crt")[0].public_key() == cbs_key


def test_rerun_reissues_a_missing_or_nearly_expired_crl(pki: Path, tmp_path: Path) -> None:
    directory = copy_pki(pki, tmp_path / "pki")
    (directory / "ca.crl").unlink()
    assert create_dev_pki(directory, PARTICIPANTS) == [directory / "ca.crl"]
    first = x509.load_pem_x509_crl((directory / "ca.crl").read_bytes())
    write_crl(directory, directory / "ca.crl", next_update=timedelta(days=2))
    assert create_dev_pki(directory, PARTICIPANTS) == [directory / "ca.crl"]
    renewed = x509.load_pem_x509_crl((directory / "ca.crl").read_bytes())
    assert renewed.next_update_utc is not None
    assert renewed.next_update_utc - datetime.now(UTC) > timedelta(days=29)
    assert [e.serial_number for e in renewed] == [e.serial_number for e in first]
    assert {p.name: p.read_bytes() for p in directory.glob("*.key")} == {
        p.name: p.read_bytes() for p in pki.glob("*.key")
    }


def test_force_replaces_every_key(pki: Path, tmp_path: Path) -> None:
    directory = copy_pki(pki, tmp_path / "pki")
    before = snapshot(directory)
    written = create_dev_pki(directory, PARTICIPANTS, force=True)
    assert {p.name for p in written} == set(before)
    after = snapshot(directory)
    for name in before:
        assert after[name] != before[name], name
    verifier = CertificateVerifier.from_files(directory / "ca.crt", [directory / "ca.crl"])
    certs = certs_in(directory / f"{ALFA.oin}.crt")
    assert verifier.verify(certs[0], certs[1:]).oin == ALFA.oin


@pytest.mark.parametrize(
    "participants",
    [
        [DevParticipant("1234", "Too Short")],
        [DevParticipant("0000009910000001000x", "Not Digits")],
        [ALFA, DevParticipant(ALFA.oin, "Twice")],
        [DevParticipant("00000099100000020000", " ")],
    ],
)
def test_rejects_bad_participants(tmp_path: Path, participants: list[DevParticipant]) -> None:
    with pytest.raises(ValueError):
        create_dev_pki(tmp_path, participants)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- OIN


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("00000099100000010000", True),
        ("00000001823288444000", True),
        ("0000009910000001000", False),
        ("000000991000000100000", False),
        ("0000009910000001000a", False),
        ("0000009910000001000\n", False),
        ("٠٠٠٠٠٠٩٩١٠٠٠٠٠٠١٠٠٠٠", False),  # Arabic-Indic digits
        ("", False),
    ],
)
def test_is_valid_oin(value: str, valid: bool) -> None:
    assert is_valid_oin(value) is valid


def test_oin_from_certificate_requires_a_valid_serial_number(pki: Path) -> None:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "KvK-nummer"),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, "12345678"),
        ]
    )
    assert oin_from_certificate(issue_leaf(pki, name)) is None
    assert oin_from_certificate(certs_in(pki / "ca.crt")[0]) is None


# --------------------------------------------------------------------------- verifier


@pytest.mark.parametrize("participant", PARTICIPANTS, ids=lambda p: p.oin)
def test_verifier_accepts_each_participant(
    pki: Path, verifier: CertificateVerifier, participant: DevParticipant
) -> None:
    certs = certs_in(pki / f"{participant.oin}.crt")
    identity = verifier.verify(certs[0], certs[1:])
    assert identity.oin == participant.oin
    assert identity.serial_number == certs[0].serial_number
    assert identity.not_after == certs[0].not_valid_after_utc
    assert identity.fingerprint_sha256 == certs[0].fingerprint(hashes.SHA256()).hex()
    assert f"CN={participant.name}" in identity.subject
    assert identity.certificate == certs[0]
    # the intermediate may also come from the intermediates file only
    assert verifier.verify(certs[0]).oin == participant.oin
    der = [c.public_bytes(serialization.Encoding.DER) for c in certs]
    assert verifier.verify_der(der[0], der[1:]).oin == participant.oin


def test_verifier_accepts_the_gateway_certificate(pki: Path, verifier: CertificateVerifier) -> None:
    assert verifier.verify(leaf(pki, "server")).oin == GATEWAY_OIN


def test_intermediate_from_the_presented_chain_only(pki: Path) -> None:
    verifier = CertificateVerifier.from_files(pki / "ca.crt", [pki / "ca.crl"])
    certs = certs_in(pki / f"{ALFA.oin}.crt")
    assert verifier.verify(certs[0], certs[1:]).oin == ALFA.oin
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(certs[0])
    assert rejected.value.reason == "untrusted"


@pytest.mark.parametrize("stem", NEGATIVE)
def test_verifier_rejects_the_negative_certificates(
    pki: Path, verifier: CertificateVerifier, stem: str
) -> None:
    certs = certs_in(pki / f"{stem}.crt")
    for chain in ([], certs[1:]):
        with pytest.raises(CertificateRejected) as rejected:
            verifier.verify(certs[0], chain)
        assert rejected.value.reason == stem


def test_untrusted_root_presented_as_chain_is_not_trusted(
    pki: Path, verifier: CertificateVerifier
) -> None:
    untrusted_ca = certs_in(pki / "untrusted-ca.crt")[0]
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(untrusted_ca)
    assert rejected.value.reason == "untrusted"


def test_certificate_without_oin_is_rejected(pki: Path, verifier: CertificateVerifier) -> None:
    cert = issue_leaf(pki, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Geen OIN BV")]))
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(cert)
    assert rejected.value.reason == "no_oin"


def test_wrong_usage_is_rejected(pki: Path, verifier: CertificateVerifier) -> None:
    alfa_name = leaf(pki, ALFA.oin).subject
    server_only = issue_leaf(pki, alfa_name, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(server_only)
    assert rejected.value.reason == "bad_usage"
    lenient = CertificateVerifier.from_files(pki / "ca.crt", intermediates_file=pki / "chain.pem")
    with pytest.raises(CertificateRejected) as rejected:
        lenient.verify(certs_in(pki / "intermediate.crt")[0])
    assert rejected.value.reason == "bad_usage"  # a CA is no participant


def test_not_yet_valid(pki: Path, verifier: CertificateVerifier) -> None:
    cert = leaf(pki, ALFA.oin)
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(cert, at=cert.not_valid_before_utc - timedelta(seconds=1))
    assert rejected.value.reason == "not_yet_valid"
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(cert, at=cert.not_valid_after_utc + timedelta(seconds=1))
    assert rejected.value.reason == "expired"


def test_stale_crl_is_unavailable(pki: Path, tmp_path: Path) -> None:
    stale = tmp_path / "stale.crl"
    write_crl(pki, stale, next_update=-timedelta(hours=1))
    cert = leaf(pki, ALFA.oin)
    for require_crl in (True, False):
        verifier = CertificateVerifier.from_files(
            pki / "ca.crt", [stale], pki / "chain.pem", require_crl=require_crl
        )
        with pytest.raises(CertificateRejected) as rejected:
            verifier.verify(cert)
        assert rejected.value.reason == "crl_unavailable"
    # the dev CRL, too, once the clock passes its nextUpdate
    fresh = CertificateVerifier.from_files(pki / "ca.crt", [pki / "ca.crl"], pki / "chain.pem")
    with pytest.raises(CertificateRejected) as rejected:
        fresh.verify(cert, at=datetime.now(UTC) + timedelta(days=31))
    assert rejected.value.reason == "crl_unavailable"


def test_missing_crl_is_accepted_unless_required(pki: Path) -> None:
    cert = leaf(pki, ALFA.oin)
    lenient = CertificateVerifier.from_files(pki / "ca.crt", intermediates_file=pki / "chain.pem")
    assert lenient.verify(cert).oin == ALFA.oin
    assert lenient.verify(leaf(pki, "revoked")).oin == ALFA.oin  # nobody told it
    strict = CertificateVerifier.from_files(
        pki / "ca.crt", intermediates_file=pki / "chain.pem", require_crl=True
    )
    with pytest.raises(CertificateRejected) as rejected:
        strict.verify(cert)
    assert rejected.value.reason == "crl_unavailable"


def test_crl_with_a_bad_signature_is_unavailable(pki: Path, tmp_path: Path) -> None:
    forged = tmp_path / "forged.crl"
    write_crl(pki, forged, signer=private_key(pki / "untrusted-ca.key"))
    verifier = CertificateVerifier.from_files(pki / "ca.crt", [forged], pki / "chain.pem")
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(leaf(pki, ALFA.oin))
    assert rejected.value.reason == "crl_unavailable"


def test_reload_crls_sees_a_new_revocation(pki: Path, tmp_path: Path) -> None:
    crl_file = tmp_path / "ca.crl"
    shutil.copy(pki / "ca.crl", crl_file)
    verifier = CertificateVerifier.from_files(pki / "ca.crt", [crl_file], pki / "chain.pem")
    cbs = leaf(pki, CBS.oin)
    first = verifier.verify(cbs)
    assert verifier.verify(cbs) is first  # served from the cache
    write_crl(pki, crl_file, revoked_serials=(cbs.serial_number,))
    assert verifier.verify(cbs) is first  # still cached until reload
    verifier.reload_crls()
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify(cbs)
    assert rejected.value.reason == "revoked"
    crl_file.write_bytes(b"garbage")  # a broken file keeps the last good CRLs
    verifier.reload_crls()
    with pytest.raises(CertificateRejected):
        verifier.verify(cbs)


def test_cached_rejections_are_raised_afresh(pki: Path, verifier: CertificateVerifier) -> None:
    cert = leaf(pki, "revoked")
    errors = []
    for _ in range(2):
        with pytest.raises(CertificateRejected) as rejected:
            verifier.verify(cert)
        errors.append(rejected.value)
    assert errors[0] is not errors[1]
    assert errors[0].reason == errors[1].reason == "revoked"


def test_malformed_der_is_untrusted(verifier: CertificateVerifier) -> None:
    with pytest.raises(CertificateRejected) as rejected:
        verifier.verify_der(b"\x30\x03\x02\x01\x01")
    assert rejected.value.reason == "untrusted"


def test_expiry_report(pki: Path, verifier: CertificateVerifier) -> None:
    report = verifier.expiry_report()
    root = certs_in(pki / "ca.crt")[0]
    intermediate = certs_in(pki / "intermediate.crt")[0]
    crl = x509.load_pem_x509_crl((pki / "ca.crl").read_bytes())
    assert report == {
        f"anchor:{root.subject.rfc4514_string()}": root.not_valid_after_utc,
        f"intermediate:{intermediate.subject.rfc4514_string()}": intermediate.not_valid_after_utc,
        f"crl:{intermediate.subject.rfc4514_string()}": crl.next_update_utc,
    }


# --------------------------------------------------------------------------- TLS


@dataclass
class TlsServer:
    port: int
    peers: list[x509.Certificate | None] = field(default_factory=list)


async def _serve(
    context: ssl.SSLContext, verifier: CertificateVerifier
) -> AsyncIterator[TlsServer]:
    state = TlsServer(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cert = peer_certificate(writer.get_extra_info("ssl_object"))
        state.peers.append(cert)
        answer = verifier.verify(cert).oin if cert is not None else "anonymous"
        writer.write(answer.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def tls_server(pki: Path, verifier: CertificateVerifier) -> AsyncIterator[TlsServer]:
    context = server_ssl_context(
        pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "ca.crl"
    )
    async for state in _serve(context, verifier):
        yield state


def client_for(pki: Path, stem: str | None) -> ssl.SSLContext:
    if stem is None:
        return client_ssl_context(None, None, pki / "ca.crt")
    return client_ssl_context(pki / f"{stem}.crt", pki / f"{stem}.key", pki / "ca.crt")


async def exchange(port: int, context: ssl.SSLContext, host: str = "localhost") -> bytes:
    """Connect, read the server's answer; b"" or an exception when the server refuses us."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=host), 10
    )
    try:
        return await asyncio.wait_for(reader.read(100), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def assert_refused(port: int, context: ssl.SSLContext) -> None:
    try:
        answer = await exchange(port, context)
    except (ssl.SSLError, ConnectionError):
        return
    assert answer == b""


@pytest.mark.parametrize("participant", PARTICIPANTS, ids=lambda p: p.oin)
async def test_tls_client_certificate_identifies_the_participant(
    pki: Path, tls_server: TlsServer, participant: DevParticipant
) -> None:
    answer = await exchange(tls_server.port, client_for(pki, participant.oin))
    assert answer.decode() == participant.oin
    [cert] = tls_server.peers
    assert cert is not None and oin_from_certificate(cert) == participant.oin


async def test_tls_server_verifies_by_ip_address_too(pki: Path, tls_server: TlsServer) -> None:
    answer = await exchange(tls_server.port, client_for(pki, ALFA.oin), host="127.0.0.1")
    assert answer.decode() == ALFA.oin


@pytest.mark.parametrize("stem", [*NEGATIVE, None], ids=[*NEGATIVE, "no-certificate"])
async def test_tls_refuses_bad_clients_in_the_handshake(
    pki: Path, tls_server: TlsServer, stem: str | None
) -> None:
    await assert_refused(tls_server.port, client_for(pki, stem))
    assert tls_server.peers == []  # the application never saw the connection


async def test_tls_client_refuses_an_untrusted_server(pki: Path, tls_server: TlsServer) -> None:
    context = client_ssl_context(
        pki / f"{ALFA.oin}.crt", pki / f"{ALFA.oin}.key", pki / "untrusted-ca.crt"
    )
    with pytest.raises(ssl.SSLCertVerificationError):
        await exchange(tls_server.port, context)
    context = client_for(pki, ALFA.oin)
    with pytest.raises(ssl.SSLCertVerificationError):
        await exchange(tls_server.port, context, host="digipoort.example")


async def test_optional_client_certificate(pki: Path, verifier: CertificateVerifier) -> None:
    context = server_ssl_context(
        pki / "server.crt",
        pki / "server.key",
        pki / "ca.crt",
        pki / "ca.crl",
        require_client_cert=False,
    )
    async for server in _serve(context, verifier):
        assert await exchange(server.port, client_for(pki, None)) == b"anonymous"
        assert await exchange(server.port, client_for(pki, CBS.oin)) == CBS.oin.encode()
        await assert_refused(server.port, client_for(pki, "revoked"))
        assert [oin_from_certificate(p) if p else None for p in server.peers] == [None, CBS.oin]


async def test_refresh_crl_revokes_without_restart(
    pki: Path, tmp_path: Path, verifier: CertificateVerifier
) -> None:
    crl_file = tmp_path / "ca.crl"
    revoked_serial = leaf(pki, "revoked").serial_number
    write_crl(pki, crl_file, revoked_serials=(revoked_serial,), issued_ago=timedelta(hours=1))
    context = server_ssl_context(pki / "server.crt", pki / "server.key", pki / "ca.crt", crl_file)
    async for server in _serve(context, verifier):
        client = client_for(pki, BELASTINGDIENST.oin)
        assert await exchange(server.port, client) == BELASTINGDIENST.oin.encode()
        serial = leaf(pki, BELASTINGDIENST.oin).serial_number
        # OpenSSL keeps both CRLs and uses the one with the latest lastUpdate
        write_crl(pki, crl_file, revoked_serials=(revoked_serial, serial))
        refresh_crl(context, crl_file)
        await assert_refused(server.port, client)
        assert len(server.peers) == 1


async def test_revoked_client_passes_without_crl(pki: Path, verifier: CertificateVerifier) -> None:
    """Control for the CRL case above: the handshake refusal really comes from the CRL."""
    context = server_ssl_context(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    no_crl = CertificateVerifier.from_files(pki / "ca.crt", intermediates_file=pki / "chain.pem")
    async for server in _serve(context, no_crl):
        assert await exchange(server.port, client_for(pki, "revoked")) == ALFA.oin.encode()


def memory_handshake(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> ssl.SSLError | None:
    """Run a handshake through memory BIOs; return the server's error, if any."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    pending = [client, server]
    for _ in range(10):
        for side in list(pending):
            try:
                side.do_handshake()
                pending.remove(side)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as error:
                if side is client:
                    raise
                return error
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if not pending:
            return None
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize(
    ("stem", "verify_codes"),
    [
        (ALFA.oin, None),
        ("revoked", {23}),  # X509_V_ERR_CERT_REVOKED
        ("expired", {10}),  # X509_V_ERR_CERT_HAS_EXPIRED
        ("untrusted", {19, 20}),  # self-signed certificate in chain / unknown issuer
    ],
)
def test_handshake_failure_reasons(pki: Path, stem: str, verify_codes: set[int] | None) -> None:
    server_context = server_ssl_context(
        pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "ca.crl"
    )
    error = memory_handshake(server_context, client_for(pki, stem))
    if verify_codes is None:
        assert error is None
    else:
        assert isinstance(error, ssl.SSLCertVerificationError)
        assert error.verify_code in verify_codes
    error = memory_handshake(server_context, client_for(pki, None))
    assert error is not None and error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


def test_contexts_require_tls12_and_client_certificates(pki: Path) -> None:
    server = server_ssl_context(pki / "server.crt", pki / "server.key", pki / "ca.crt")
    assert server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server.verify_mode == ssl.CERT_REQUIRED
    assert not server.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    client = client_for(pki, ALFA.oin)
    assert client.minimum_version == ssl.TLSVersion.TLSv1_2
    assert client.verify_mode == ssl.CERT_REQUIRED and client.check_hostname


def test_tls_config_errors_name_files_not_contents(pki: Path, tmp_path: Path) -> None:
    key = private_key(pki / f"{ALFA.oin}.key")
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret-passphrase"),
        )
    )
    cases: list[Callable[[], object]] = [
        lambda: client_ssl_context(pki / f"{ALFA.oin}.crt", encrypted, pki / "ca.crt"),
        lambda: client_ssl_context(pki / f"{ALFA.oin}.crt", pki / "server.key", pki / "ca.crt"),
        lambda: server_ssl_context(pki / "server.crt", tmp_path / "missing.key", pki / "ca.crt"),
        lambda: server_ssl_context(pki / "server.crt", pki / "server.key", tmp_path / "none.pem"),
    ]
    secret_text = (pki / f"{ALFA.oin}.key").read_text() + (pki / "server.key").read_text()
    for make in cases:
        with pytest.raises(TLSConfigError) as error:
            make()
        message = str(error.value)
        assert "PRIVATE KEY" not in message and "s3cret" not in message
        assert not any(line in message for line in secret_text.splitlines()[1:-1])
