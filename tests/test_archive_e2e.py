"""The archive end to end, per koppelvlak, over real sockets with real TLS: each
exchange leaves the expected entries (the exact bytes received and answered, TLS facts,
the client's certificate chain), ``digipoort archive show`` prints them, and a failing
archive refuses the submission with the protocol's technical fault (nothing accepted)."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from adapters.wus.client import WusClient, WusFault
from adapters.wus.codes import FAULT_NUMBERS
from adapters.wus.wsdl import AANLEVER_PATH
from digipoort.archive.show import Found, find
from digipoort.archive.verify import verify
from digipoort.cli import main as cli_main
from digipoort.wus.soap import AANLEVERSERVICE_NS, KOPPELVLAK_NS
from tests.support import ALFA, BELASTINGDIENST, SAMPLES, Env, free_port, wait_for
from tests.test_afleveren_push import aflever_server, make_push_recipient
from tests.test_afleveren_push import fast_retries as fast_push
from tests.test_afleveren_push import submit as submit_direct
from tests.test_ftp import kenmerk_of, login, run
from tests.test_smtp import mail
from tests.test_smtp import submit as submit_mail
from tests.test_smtp_relay import Mta, make_smtp_recipient
from tests.test_wus import omzetbelasting_request

ACTION = AANLEVERSERVICE_NS + "AanleverService/aanleverenRequest"
PUSH = ("intake", "sweeper", "validator", "router", "deliverer")


def client(env: Env, stem: str = ALFA) -> WusClient:
    pki = env.dir / "pki"
    return WusClient(
        env.settings.wus.public_url, pki / f"{stem}.crt", pki / f"{stem}.key", pki / "ca.crt"
    )


def kinds(found: list[Found]) -> list[str]:
    return [f.entry.kind for f in found]


def by_kind(found: list[Found], kind: str) -> Found:
    [hit] = [f for f in found if f.entry.kind == kind]
    return hit


def fingerprint(path: Path) -> str:
    cert = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


async def archived(env: Env, kenmerk: Any, kind: str) -> list[Found]:
    async def look() -> list[Found] | None:
        found, problems = await asyncio.to_thread(find, env.settings, str(kenmerk))
        assert not problems
        return found if kind in kinds(found) else None

    return await wait_for(look, timeout=30, what=f"{kind} archived for {kenmerk}")


async def test_wus_request_and_signed_response_archived_and_shown(env: Env) -> None:
    await env.start_gateway(components=("intake", "sweeper", "wus"))
    async with client(env) as c:
        message_id, body = c.sign(AANLEVER_PATH, ACTION, omzetbelasting_request())
        status, response, der = await c.post_raw(AANLEVER_PATH, ACTION, body)
        payload = c.check_response(status, response, der, message_id)
    kenmerk = payload.findtext(f"{{{KOPPELVLAK_NS}}}kenmerk")
    assert kenmerk
    found = await archived(env, kenmerk, "wus.response")
    request, answer = by_kind(found, "wus.request"), by_kind(found, "wus.response")
    assert request.payload() == body  # the exact bytes received
    assert answer.payload() == response  # the exact signed bytes returned
    assert request.entry.exchange == answer.entry.exchange and answer.entry.kenmerk == kenmerk
    facts = request.entry.header["facts"]
    assert request.entry.header["oin"] == ALFA and facts["operation"] == "aanleveren"
    assert facts["tls_version"] in ("TLSv1.2", "TLSv1.3") and facts["tls_cipher"]
    pki = env.dir / "pki"
    assert facts["peer_certificate"] == fingerprint(pki / f"{ALFA}.crt")
    assert facts["peer_chain"][-1] == fingerprint(pki / "ca.crt") and len(facts["peer_chain"]) >= 2
    certs = [f for f in found if f.entry.kind == "certificate"]
    assert {f.entry.header["sha256"] for f in certs} == set(facts["peer_chain"])
    # status queries are not archived
    async with client(env) as c:
        await c.status("getStatussenProces", kenmerk=kenmerk)
    found_again, _ = find(env.settings, kenmerk)
    assert kinds(found_again).count("wus.request") == 1
    result = CliRunner().invoke(
        cli_main, ["archive", "show", kenmerk, "--config", str(env.config_path)]
    )
    assert result.exit_code == 0, result.output
    assert "wus.request" in result.output and "wus.response" in result.output
    assert "aanleverResponse" in result.output and facts["tls_version"] in result.output
    assert all(r.ok for r in verify(env.settings))


async def test_wus_refused_with_a_technical_fault_when_the_archive_fails(env: Env) -> None:
    archive_dir = env.settings.resolve(env.settings.archive.dir)
    archive_dir.parent.mkdir(parents=True, exist_ok=True)
    archive_dir.write_text("not a directory: every archive write fails")
    await env.start_gateway(components=("intake", "sweeper", "wus"))
    async with client(env) as c:
        try:
            await c.aanleveren(omzetbelasting_request())
        except WusFault as fault:
            assert fault.foutcode == "ALS" + FAULT_NUMBERS["technical"][0], fault
        else:
            raise AssertionError("accepted although the archive failed")
    conn = await env.conn()
    assert await conn.fetchval("SELECT count(*) FROM envelopes") == 0


async def test_smtp_message_as_received_and_reply_archived(env: Env) -> None:
    await env.start_gateway(components=("intake", "smtp"))
    msg = mail()
    kenmerk = await asyncio.to_thread(submit_mail, env, msg)
    found = await archived(env, kenmerk, "smtp.reply")
    received = by_kind(found, "smtp.message").payload()
    assert b"[V=" + ALFA.encode() in received and msg["Message-ID"].encode() in received
    assert by_kind(found, "smtp.reply").payload().startswith(b"250 2.0.0 OK: queued as kenmerk")
    facts = by_kind(found, "smtp.message").entry.header["facts"]
    assert facts["peer_certificate"] == fingerprint(env.dir / "pki" / f"{ALFA}.crt")


async def test_ftp_upload_hash_and_session_facts_archived(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=("intake", "ftp"))
    src = tmp_path / "detailhandel-9.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)

    def upload() -> str:
        ftp = login(env)
        with open(src, "rb") as fh:
            reply = ftp.storbinary("STOR /in/CBS-Detailhandel/detailhandel-9.xml", fh)
        ftp.quit()
        return str(reply)

    kenmerk = kenmerk_of(await run(upload))
    found = await archived(env, kenmerk, "ftp.reply")
    facts = by_kind(found, "ftp.upload").entry.header["facts"]
    assert facts["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert facts["size"] == src.stat().st_size and facts["bestandsnaam"] == "detailhandel-9.xml"
    assert facts["tls_version"] and facts["peer_certificate"]
    assert by_kind(found, "ftp.reply").payload().startswith(b"226 Transfer complete; kenmerk")


async def test_wus_push_receipt_archived(env: Env, tmp_path: Path) -> None:
    port = free_port()
    await make_push_recipient(env, BELASTINGDIENST, port)
    fast_push(env)
    server = aflever_server(env, BELASTINGDIENST, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:
        gw = await env.start_gateway(components=PUSH)
        [kenmerk] = await submit_direct(gw, 1)
        await env.wait_status(kenmerk, "400", recipient=BELASTINGDIENST, timeout=30)
    finally:
        await server.stop()
    found = await archived(env, kenmerk, "aflever.wus.receipt")
    receipt = by_kind(found, "aflever.wus.receipt")
    assert b"afleverResponse" in receipt.payload() and str(kenmerk).encode() in receipt.payload()
    assert receipt.entry.header["oin"] == BELASTINGDIENST
    facts = receipt.entry.header["facts"]
    assert facts["url"].endswith("/afleverservice") and len(facts["request_sha256"]) == 64


async def test_smtp_relay_final_reply_archived(env: Env) -> None:
    port = free_port()
    await make_smtp_recipient(env, BELASTINGDIENST, port)
    fast_push(env)
    mta = await Mta(env, port).start()
    try:
        gw = await env.start_gateway(components=PUSH)
        [kenmerk] = await submit_direct(gw, 1)
        await env.wait_status(kenmerk, "400", recipient=BELASTINGDIENST, timeout=30)
    finally:
        await mta.stop()
    found = await archived(env, kenmerk, "aflever.smtp.reply")
    reply = by_kind(found, "aflever.smtp.reply")
    assert reply.payload().startswith(b"2.0.0") or b"OK" in reply.payload()
    facts = reply.entry.header["facts"]
    assert facts["mta"].endswith(str(port)) and facts["tls_version"]
    assert facts["peer_certificate"] == fingerprint(env.dir / "pki" / f"{BELASTINGDIENST}.crt")
    assert uuid.UUID(reply.entry.kenmerk or "") == kenmerk
