"""Idempotent resubmission (issue 18, item 5; docs/reliability.md): the same sender,
berichtsoort, aanleverkenmerk, documents (and belanghebbende and ontvanger) within the
window get the original kenmerk and tijdstempel back, and exactly one envelope (and one
delivery per recipient) exists."""

from __future__ import annotations

import asyncio
import dataclasses
from email.message import EmailMessage
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg

from adapters.ftp.client import FtpsClient
from adapters.wus.client import Bijlage, WusClient, aanlever_request
from digipoort import metrics, resubmission
from digipoort.envelope import Document, Identiteit
from digipoort.envelopestore import NewEnvelope, insert_envelopes
from digipoort.status import now
from tests.support import (
    ALFA,
    BELASTINGDIENST,
    BETA,
    CBS,
    DOUANE,
    HBAG,
    SAMPLES,
    Env,
    aanlevering,
    unique_aanleverkenmerk,
)

OMZETBELASTING = (SAMPLES / "omzetbelasting.xml").read_bytes()


async def envelope_count(env: Env, aanleverkenmerk: str) -> int:
    conn = await env.conn()
    n = await conn.fetchval(
        "SELECT count(*) FROM envelopes WHERE aanleverkenmerk = $1", aanleverkenmerk
    )
    return int(n)


def resubmitted(koppelvlak: str) -> float:
    return metrics.INTAKE.labels(koppelvlak, "resubmitted")._value.get()


# --------------------------------------------------------------------------- intake


async def test_same_submission_gets_the_original_kenmerk_and_tijdstempel(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    k = unique_aanleverkenmerk()
    before = resubmitted("wus")
    first = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    again = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    assert again == first  # kenmerk and tijdstempel_aangeleverd
    assert await envelope_count(env, k) == 1
    assert resubmitted("wus") == before + 1
    # over another koppelvlak too: the sender resubmits by mail what WUS lost
    k = unique_aanleverkenmerk()
    cbs = await gw.intake.aanleveren(aanlevering("CBS-Detailhandel", aanleverkenmerk=k))
    by_mail = aanlevering("CBS-Detailhandel", aanleverkenmerk=k, koppelvlak="smtp")
    assert await gw.intake.aanleveren(by_mail) == cbs


async def test_any_difference_makes_a_new_envelope(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    k = unique_aanleverkenmerk()
    bijlage = Document("application/pdf", "b.pdf", content=b"%PDF-1.4 een")
    original = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    variants = [
        aanlevering(aanleverkenmerk=k, content=OMZETBELASTING + b"\n"),  # other document
        aanlevering(aanleverkenmerk=k, sender=BETA),  # other sender
        aanlevering(aanleverkenmerk=k + "x"),  # other aanleverkenmerk
        aanlevering(aanleverkenmerk=k, bijlagen=(bijlage,)),  # a bijlage more
        aanlevering(
            aanleverkenmerk=k,
            bijlagen=(Document("application/pdf", "b.pdf", content=b"%PDF-1.4 twee"),),
        ),  # another bijlage
        aanlevering("CBS-Detailhandel", aanleverkenmerk=k),  # other berichtsoort
        aanlevering(aanleverkenmerk=k, ontvanger=BELASTINGDIENST),  # an ontvanger
        dataclasses.replace(  # another belanghebbende
            aanlevering(aanleverkenmerk=k), belanghebbende=Identiteit("123456782", "BSN")
        ),
    ]
    kenmerken = {original.kenmerk}
    for a in variants:
        kenmerken.add((await gw.intake.aanleveren(a)).kenmerk)
    assert len(kenmerken) == 1 + len(variants)


async def test_without_aanleverkenmerk_nothing_changes(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    a = aanlevering()
    bare = dataclasses.replace(a, aanleverkenmerk=None)
    first = await gw.intake.aanleveren(bare)
    second = await gw.intake.aanleveren(bare)
    assert first.kenmerk != second.kenmerk
    conn = await env.conn()
    assert await conn.fetchval("SELECT count(*) FROM resubmission_keys") == 0


async def test_outside_the_window_a_new_envelope_and_the_key_moves_on(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    k = unique_aanleverkenmerk()
    first = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    conn = await env.conn()
    # the original is 24 h and a minute old (default window: 24 h)
    await conn.execute(
        "UPDATE resubmission_keys SET tijdstempel = tijdstempel - interval '24 hours 1 minute'"
    )
    second = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    assert second.kenmerk != first.kenmerk
    third = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    assert third == second  # the window now runs from the second submission
    assert await envelope_count(env, k) == 2
    # the sweeper's purge drops what fell out of the window, nothing else
    await conn.execute(
        "UPDATE resubmission_keys SET tijdstempel = tijdstempel - interval '25 hours'"
        " WHERE kenmerk = $1",
        second.kenmerk,
    )
    other = await gw.intake.aanleveren(aanlevering())
    assert await resubmission.purge(conn, window_seconds=24 * 3600) == 1
    assert [r["kenmerk"] for r in await conn.fetch("SELECT kenmerk FROM resubmission_keys")] == [
        other.kenmerk
    ]


async def test_window_zero_disables(env: Env) -> None:
    env.settings.intake.resubmission_window_seconds = 0
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    k = unique_aanleverkenmerk()
    first = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    second = await gw.intake.aanleveren(aanlevering(aanleverkenmerk=k))
    assert first.kenmerk != second.kenmerk


async def test_concurrent_identical_submissions_make_one_envelope(env: Env) -> None:
    """Two gateways (eight writers, separate transactions) and one batch each: every
    identical submission gets the same kenmerk, and one envelope exists."""
    gw1 = await env.start_gateway(components=("intake",))
    gw2 = await env.start_gateway(components=("intake",), serve_http=False)
    assert gw1.intake is not None and gw2.intake is not None
    for _ in range(5):
        k = unique_aanleverkenmerk()
        results = await asyncio.gather(
            *(
                (gw1.intake if i % 2 else gw2.intake).aanleveren(aanlevering(aanleverkenmerk=k))
                for i in range(40)
            )
        )
        assert len(set(results)) == 1
        assert await envelope_count(env, k) == 1
        history = await env.history(results[0].kenmerk)
        assert [s.code for s in history] == ["105", "100", "110"]


async def test_claim_race_waits_for_the_first_transaction(env: Env) -> None:
    """The race at the database: the second claim blocks on the first transaction's key
    and, once that commits, returns the first one's kenmerk as the original."""
    await env.start_gateway(components=("intake",))  # migrations applied
    c1: asyncpg.Connection = await asyncpg.connect(env.db_url)
    c2: asyncpg.Connection = await asyncpg.connect(env.db_url)
    try:
        key = resubmission.sleutel(aanlevering(aanleverkenmerk="race"), [])
        assert key is not None
        first = NewEnvelope(uuid4(), now(), aanlevering(), [])
        second = resubmission.Original(uuid4(), now())
        tx1 = c1.transaction()
        await tx1.start()
        won = await resubmission.claim(
            c1,
            {key: resubmission.Original(first.kenmerk, first.tijdstempel)},
            window_seconds=3600,
        )
        assert won == {}
        await insert_envelopes(c1, [first])

        async def claim2() -> dict[bytes, resubmission.Original]:
            async with c2.transaction():
                return await resubmission.claim(c2, {key: second}, window_seconds=3600)

        task = asyncio.create_task(claim2())
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done  # blocked on the uncommitted key
        await tx1.commit()
        assert await asyncio.wait_for(task, 10) == {
            key: resubmission.Original(first.kenmerk, first.tijdstempel)
        }
    finally:
        await c1.close()
        await c2.close()


# --------------------------------------------------------------------------- end to end


async def test_wus_resubmission_same_kenmerk_one_delivery(env: Env) -> None:
    await env.start_gateway()
    pki = env.dir / "pki"
    k = unique_aanleverkenmerk()

    def request() -> object:
        return aanlever_request(
            berichtsoort="Omzetbelasting",
            belanghebbende=(ALFA, "OIN"),
            inhoud=Bijlage("text/xml", "omzetbelasting.xml", OMZETBELASTING),
            aanleverkenmerk=k,
        )

    async with WusClient(
        env.settings.wus.public_url, pki / f"{ALFA}.crt", pki / f"{ALFA}.key", pki / "ca.crt"
    ) as client:
        first = await client.aanleveren(request())  # type: ignore[arg-type]
        again = await client.aanleveren(request())  # type: ignore[arg-type]
    assert again["kenmerk"] == first["kenmerk"]
    assert again["tijdstempelAangeleverd"] == first["tijdstempelAangeleverd"]
    assert again["aanleverkenmerk"] == k
    await env.wait_status(UUID(first["kenmerk"]), "400", recipient=BELASTINGDIENST)
    got = await env.queue_messages(BELASTINGDIENST, expect=1, settle=0.5)
    assert [m.message_id for m in got] == [first["kenmerk"]]


async def test_smtp_resubmission_same_kenmerk_one_delivery(env: Env) -> None:
    from tests.test_smtp import COMPONENTS, DOMAIN, submit

    await env.start_gateway(components=COMPONENTS)
    k = unique_aanleverkenmerk()

    def mail(message_id: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = f"alfa@{DOMAIN}"
        msg["To"] = f"douane-uitvoer@{DOMAIN}"
        msg["Subject"] = f"[V={ALFA}][A={DOUANE}][K={k}]"
        msg["Message-ID"] = message_id
        msg.set_content("aanlevering\n")
        msg.add_attachment(
            OMZETBELASTING, maintype="text", subtype="xml", filename="omzetbelasting.xml"
        )
        return msg

    first = await asyncio.to_thread(submit, env, mail("<m1@alfa.test>"))
    # the resend is a new mail (its own Message-ID) with the same subject and document
    again = await asyncio.to_thread(submit, env, mail("<m2@alfa.test>"))
    assert again == first
    await env.wait_status(first, "400", recipient=DOUANE)
    got = await env.queue_messages(DOUANE, expect=1, settle=0.5)
    assert [m.message_id for m in got] == [str(first)]
    assert await envelope_count(env, k) == 1


async def test_ftp_resubmission_same_kenmerk_one_delivery_per_recipient(
    env: Env, tmp_path: Path
) -> None:
    await env.start_gateway(components=("intake", "validator", "router", "ftp"))
    src = tmp_path / "detailhandel.xml"
    src.write_bytes((SAMPLES / "cbs-detailhandel.xml").read_bytes())
    name = unique_aanleverkenmerk("dh")  # the remote name is the aanleverkenmerk
    client = FtpsClient(
        "127.0.0.1",
        env.settings.ftp.port,
        env.pki / f"{ALFA}.crt",
        env.pki / f"{ALFA}.key",
        env.pki / "ca.crt",
    )
    try:
        first = await asyncio.to_thread(client.upload, "CBS-Detailhandel", src, name=name)
        again = await asyncio.to_thread(client.upload, "CBS-Detailhandel", src, name=name)
    finally:
        await asyncio.to_thread(client.close)
    assert again == first
    kenmerk = UUID(first)
    for oin in (CBS, HBAG):
        await env.wait_status(kenmerk, "400", recipient=oin)
        got = await env.queue_messages(oin, expect=1, settle=0.5)
        assert [m.message_id for m in got] == [first]
    assert await envelope_count(env, name) == 1
