"""Intake's one statement per group commit (digipoort/envelopestore.py accept_batch,
issue 15 item 2): the replay check and the resubmission claim inside it, the path where a
concurrent batch claimed the key while the statement waited, and the hand-off marks."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import asyncpg
import pytest

from digipoort import resubmission
from digipoort.envelope import StoredDocument, sha256_hex
from digipoort.envelopestore import NewEnvelope, insert_envelopes
from digipoort.intake import IntakeRefused
from digipoort.status import now
from tests.support import Env, aanlevering, unique_aanleverkenmerk, wait_for


async def test_key_claimed_by_a_concurrent_transaction_answers_with_its_original(
    env: Env,
) -> None:
    """The statement blocks on a key another transaction holds; once that commits, the
    submission is a resubmission of that transaction's envelope (read by a second
    statement, since the statement's snapshot predates it)."""
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    k = unique_aanleverkenmerk()
    submission = aanlevering(aanleverkenmerk=k)
    probe = aanlevering(aanleverkenmerk=k)
    content = probe.inhoud.content
    assert content is not None
    stored = [
        StoredDocument(0, "text/xml", "bericht.xml", len(content), sha256_hex(content), content)
    ]
    key = resubmission.sleutel(probe, stored)
    assert key is not None
    first = NewEnvelope(uuid4(), now(), probe, stored)
    c1: asyncpg.Connection = await asyncpg.connect(env.db_url)
    try:
        tx = c1.transaction()
        await tx.start()
        await resubmission.claim(
            c1, {key: resubmission.Original(first.kenmerk, first.tijdstempel)}, window_seconds=3600
        )
        await insert_envelopes(c1, [first])
        task = asyncio.create_task(gw.intake.aanleveren(submission))
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done  # blocked on the uncommitted key
        await tx.commit()
        accepted = await asyncio.wait_for(task, 30)
    finally:
        await c1.close()
    assert accepted.kenmerk == first.kenmerk
    conn = await env.conn()
    assert await conn.fetchval("SELECT count(*) FROM envelopes WHERE aanleverkenmerk = $1", k) == 1


async def test_replay_inside_the_statement(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    first = await gw.intake.aanleveren(aanlevering(), replay="digest-1")
    with pytest.raises(IntakeRefused) as refused:
        await gw.intake.aanleveren(aanlevering(), replay="digest-1")
    assert refused.value.reden == IntakeRefused.REPLAY
    # the same message id twice in one batch: one envelope, one replay
    results = await asyncio.gather(
        *(gw.intake.aanleveren(aanlevering(), replay="digest-2") for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(
        isinstance(r, IntakeRefused) and r.reden == IntakeRefused.REPLAY
        for r in results
        if isinstance(r, BaseException)
    )
    conn = await env.conn()
    assert await conn.fetchval("SELECT count(*) FROM wus_message_ids") == 2
    codes = [
        r["code"]
        for r in await conn.fetch(
            "SELECT code FROM statuses WHERE kenmerk = $1 ORDER BY id", first.kenmerk
        )
    ]
    assert codes == ["105", "100", "110"]


async def test_confirmed_hand_offs_are_marked(env: Env) -> None:
    gw = await env.start_gateway(components=("intake",))
    assert gw.intake is not None
    accepted = [await gw.intake.aanleveren(aanlevering()) for _ in range(3)]
    conn = await env.conn()

    async def all_marked() -> bool:
        return bool(
            await conn.fetchval(
                "SELECT bool_and(handed_off) FROM envelopes WHERE kenmerk = ANY($1::uuid[])",
                [a.kenmerk for a in accepted],
            )
        )

    await wait_for(all_marked, timeout=10, what="handed_off marks")
