"""Queue recipients: isolated broker accounts, the reference subscriber and zetStatus
over AMQP, with real RabbitMQ/PostgreSQL and real AMQP connections as the recipients."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aio_pika
import aiormq.exceptions
import pytest
import pytest_asyncio
from click.testing import CliRunner

from digipoort.broker import AFLEVER_EXCHANGE, STATUS_EXCHANGE, aflever_queue
from digipoort.cli import main
from digipoort.envelope import Document
from digipoort.provision import Management
from routing import subscriber
from routing.deadletters import list_dead
from routing.provision import delete_recipient_users, recipient_oins
from routing.statusreports import build_zet_status
from routing.subscriber import subscribe
from tests.support import BELASTINGDIENST, CBS, MGMT, Env, aanlevering, wait_for

A, B = BELASTINGDIENST, CBS


@pytest_asyncio.fixture(loop_scope="session")
async def urls(env: Env) -> AsyncIterator[dict[str, str]]:
    """Every recipient provisioned through the CLI; their AMQP URLs by OIN."""
    out = env.dir / "creds"
    result = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["recipients", "provision", "--config", str(env.config_path), "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    oins = recipient_oins(env.settings.registry)
    try:
        yield {oin: (out / f"{oin}.txt").read_text().strip() for oin in oins}
    finally:
        await delete_recipient_users(Management(MGMT), env.amqp_url, oins)


def user_of(url: str) -> str:
    return unquote(urlsplit(url).username or "")


async def refused(url: str, action: str) -> bool:
    """Try ``action`` on a fresh channel of a connection with ``url``; True if refused."""
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel()
        try:
            if action == "get B":
                q = await ch.get_queue(aflever_queue(B), ensure=False)
                await q.get(fail=False)
            elif action == "purge B":
                q = await ch.get_queue(aflever_queue(B), ensure=False)
                await q.purge()
            elif action == "bind B's key to own queue":
                q = await ch.get_queue(aflever_queue(A), ensure=False)
                await q.bind(AFLEVER_EXCHANGE, routing_key=B)
            elif action == "bind B's queue":
                q = await ch.get_queue(aflever_queue(B), ensure=False)
                await q.bind(AFLEVER_EXCHANGE, routing_key=A)
            elif action == "declare":
                await ch.declare_queue("sneaky", durable=True)
            elif action == "delete B":
                q = await ch.get_queue(aflever_queue(B), ensure=False)
                await q.delete(if_unused=False, if_empty=False)
            else:  # pragma: no cover
                raise AssertionError(action)
        except aiormq.exceptions.ChannelAccessRefused:
            return True
        return False
    finally:
        await conn.close()


async def test_provision_writes_0600_credentials_and_keeps_them(
    env: Env, urls: dict[str, str]
) -> None:
    out = env.dir / "creds"
    path = out / f"{A}.txt"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert user_of(urls[A]) == f"{A}@{env.name}"
    assert set(urls) == set(recipient_oins(env.settings.registry))
    before = path.read_text()
    args = ["recipients", "provision", "--config", str(env.config_path), "--out", str(out)]
    result = await asyncio.to_thread(CliRunner().invoke, main, args)
    assert result.exit_code == 0 and "kept" in result.output
    assert path.read_text() == before
    assert urlsplit(before.strip()).password not in result.output  # never shown
    result = await asyncio.to_thread(CliRunner().invoke, main, [*args, "--rotate"])
    assert result.exit_code == 0 and "rotated" in result.output
    assert path.read_text() != before
    with pytest.raises(aio_pika.exceptions.ProbableAuthenticationError):
        await aio_pika.connect(before.strip())
    conn = await aio_pika.connect(path.read_text().strip())
    await conn.close()


async def test_recipient_cannot_touch_another_recipients_queue(
    env: Env, urls: dict[str, str]
) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None
    for_a = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await env.wait_status(for_a.kenmerk, "400", recipient=A)
    for action in (
        "get B",
        "purge B",
        "bind B's key to own queue",
        "bind B's queue",
        "declare",
        "delete B",
    ):
        assert await refused(urls[A], action), action

    # A consumes its own queue
    conn = await aio_pika.connect(urls[A])
    try:
        ch = await conn.channel()
        q = await ch.get_queue(aflever_queue(A), ensure=False)
        msg = await q.get(fail=False)
        assert msg is not None and msg.message_id == str(for_a.kenmerk)
        await msg.ack()
    finally:
        await conn.close()


async def publish_status(url: str, body: bytes, *, user_id: str | None) -> None:
    conn = await aio_pika.connect(url)
    try:
        ch = await conn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(STATUS_EXCHANGE, ensure=False)
        await ex.publish(
            aio_pika.Message(body, user_id=user_id, content_type="application/xml"),
            routing_key=urlsplit(url).username or "",
        )
    finally:
        await conn.close()


async def test_zetstatus_from_the_recipient_enters_the_senders_history(
    env: Env, urls: dict[str, str]
) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await env.wait_status(accepted.kenmerk, "400", recipient=A)

    # B is not a recipient of this kenmerk: refused and dead-lettered with the reason
    await publish_status(
        urls[B], build_zet_status(accepted.kenmerk, "500"), user_id=user_of(urls[B])
    )
    # no user_id: refused
    await publish_status(urls[A], build_zet_status(accepted.kenmerk, "500"), user_id=None)
    # a gateway code: refused
    await publish_status(
        urls[A], build_zet_status(accepted.kenmerk, "400"), user_id=user_of(urls[A])
    )
    # forging A's user_id as B: the broker itself refuses the publish
    with pytest.raises(Exception, match="user_id"):
        await publish_status(
            urls[B], build_zet_status(accepted.kenmerk, "500"), user_id=user_of(urls[A])
        )

    await publish_status(
        urls[A],
        build_zet_status(
            accepted.kenmerk, "500", details="ontvangen en gevalideerd", berichtkenmerk="bk-1"
        ),
        user_id=user_of(urls[A]),
    )
    history = await env.wait_status(accepted.kenmerk, "500", recipient=A)
    [s500] = [s for s in history if s.code == "500"]
    assert s500.details == "ontvangen en gevalideerd"
    assert s500.omschrijving == "Validatie bij de uitvragende partij gelukt"
    await publish_status(
        urls[A],
        build_zet_status(accepted.kenmerk, "510", foutcode="X12", foutbeschrijving="regel 3"),
        user_id=user_of(urls[A]),
    )
    history = await env.wait_status(accepted.kenmerk, "510", recipient=A)
    assert [s.recipient_oin for s in history if s.code in ("500", "510")] == [A, A]

    async def refusals() -> list[str] | None:
        reasons = [d.reason for d in await list_dead(env.amqp_url) if d.stage == "statusreports"]
        return reasons if len(reasons) == 3 else None

    reasons = await wait_for(refusals, what="3 refused reports dead-lettered")
    letters = [d for d in await list_dead(env.amqp_url) if d.stage == "statusreports"]
    assert {d.kenmerk for d in letters} == {str(accepted.kenmerk)}
    assert sorted(r.split(":")[0] for r in reasons) == [
        "code_not_allowed",
        "no_user_id",
        "not_a_recipient",
    ]
    assert [s.code for s in await env.history(accepted.kenmerk)].count("500") == 1


async def test_subscriber_writes_atomically_and_skips_duplicates(
    env: Env, urls: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None
    out = env.dir / "inbox"
    content = b"<?xml version='1.0'?><aangifte>1</aangifte>"
    evil = Document("application/pdf", "../../../etc/passwd", content=b"%PDF-1.4 bijlage")
    accepted = await gw.intake.aanleveren(
        aanlevering("Omzetbelasting", content=content, bijlagen=(evil,))
    )
    await env.wait_status(accepted.kenmerk, "400", recipient=A)

    # a failing write: nothing appears, the message is not acked
    real_write = subscriber._write_file

    def failing(path: Path, data: bytes) -> None:
        if data.startswith(b"%PDF"):
            raise OSError("disk full")
        real_write(path, data)

    monkeypatch.setattr(subscriber, "_write_file", failing)
    with pytest.raises(OSError, match="disk full"):
        await subscribe(urls[A], A, out, count=1)
    assert not (out / str(accepted.kenmerk)).exists()
    assert list((out / ".incoming").iterdir()) == []
    monkeypatch.setattr(subscriber, "_write_file", real_write)

    stored: list[subscriber.Stored] = []
    assert await subscribe(urls[A], A, out, count=1, on_stored=stored.append) == 1
    [first] = stored
    assert not first.duplicate and first.files == ["bericht.xml", "passwd"]
    d = out / str(accepted.kenmerk)
    assert (d / "bericht.xml").read_bytes() == content
    assert (d / "passwd").read_bytes() == b"%PDF-1.4 bijlage"
    meta = json.loads((d / "afleverRequest.json").read_text())
    assert meta["kenmerk"] == str(accepted.kenmerk)
    assert meta["berichtsoort"] == "Omzetbelasting"
    assert [x["bestandsnaam"] for x in meta["documents"]] == ["bericht.xml", "../../../etc/passwd"]
    assert sorted(os.listdir(d)) == ["afleverRequest.json", "bericht.xml", "passwd"]

    # the same kenmerk again (a redelivery / republish): acked and skipped
    gconn = await aio_pika.connect(env.amqp_url)
    try:
        ch = await gconn.channel(publisher_confirms=True)
        ex = await ch.get_exchange(AFLEVER_EXCHANGE, ensure=False)
        xml = _aflever_xml(str(accepted.kenmerk), content)
        await ex.publish(
            aio_pika.Message(xml, message_id=str(accepted.kenmerk), type="Omzetbelasting"),
            routing_key=A,
        )
    finally:
        await gconn.close()
    mtime = (d / "bericht.xml").stat().st_mtime_ns
    stored.clear()
    assert await subscribe(urls[A], A, out, count=1, on_stored=stored.append) == 1
    assert stored[0].duplicate
    assert (d / "bericht.xml").stat().st_mtime_ns == mtime
    assert await env.queue_depth(aflever_queue(A)) == 0


def _aflever_xml(kenmerk: str, content: bytes) -> bytes:
    ns = "http://logius.nl/digipoort/koppelvlakservices/1.2/"
    return (
        f'<afleverRequest xmlns="{ns}"><kenmerk>{kenmerk}</kenmerk>'
        "<berichtsoort>Omzetbelasting</berichtsoort>"
        "<berichtInhoud><mimeType>text/xml</mimeType><bestandsnaam>x.xml</bestandsnaam>"
        f"<inhoud>{base64.b64encode(content).decode()}</inhoud></berichtInhoud>"
        "</afleverRequest>"
    ).encode()


def test_safe_filename() -> None:
    f = subscriber.safe_filename
    assert f("../../etc/passwd") == "passwd"
    assert f("..\\..\\boot.ini") == "boot.ini"
    assert f(".hidden") == "hidden"
    assert f("") == "document"
    assert f(None) == "document"
    assert f("..") == "document"
    assert f("a b;rm -rf$(x).xml") == "a_b_rm_-rf_x_.xml"
    assert f("afleverRequest.json") == "_afleverRequest.json"
    assert len(f("x" * 500)) == 80


async def test_subscribe_command_stops_cleanly_on_sigterm(env: Env, urls: dict[str, str]) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await env.wait_status(accepted.kenmerk, "400", recipient=A)
    out = env.dir / "cli-inbox"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "digipoort"),
        "subscribe",
        "--oin",
        A,
        "--out",
        str(out),
        env={**os.environ, "DIGIPOORT_SUBSCRIBER_AMQP_URL": urls[A]},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:

        async def stored() -> bool:
            return (out / str(accepted.kenmerk) / "afleverRequest.json").exists()

        await wait_for(stored, timeout=60, what="subscriber stored the message")
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, stderr.decode()
    assert f"1 stored {accepted.kenmerk} Omzetbelasting bericht.xml" in stdout.decode()
    password = urlsplit(urls[A]).password or ""
    assert password and password not in stdout.decode() + stderr.decode()
    assert await env.queue_depth(aflever_queue(A)) == 0
