"""Meervoudig doorzenden managed by the flow owner: authenticated by certificate and key,
audited, surviving a registry reload, followed by new envelopes only."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

from digipoort import registry_store
from digipoort.cli import main
from tests.support import ALFA, CBS, DNB, HBAG, Env, aanlevering, wait_for

FLOW = "CBS-Detailhandel"


async def copies(env: Env, action: str, oin: str, *, cert: str, key: str) -> Result:
    pki = env.dir / "pki"
    args = ["flows", "copies", action, FLOW, oin, "--config", str(env.config_path)]
    args += ["--cert", str(pki / f"{cert}.crt"), "--key", str(pki / f"{key}.key")]
    return await asyncio.to_thread(CliRunner().invoke, main, args)


async def recipients_of(env: Env, kenmerk: object) -> set[str]:
    conn = await env.conn()
    rows = await conn.fetch("SELECT recipient_oin FROM deliveries WHERE kenmerk = $1", kenmerk)
    return {r["recipient_oin"] for r in rows}


async def test_owner_changes_copies_and_next_envelope_follows(env: Env) -> None:
    gw = await env.start_gateway()
    assert gw.intake is not None and gw.registry is not None
    sample = "cbs-detailhandel.xml"
    before = await gw.intake.aanleveren(aanlevering(FLOW, sample=sample))
    await env.wait_status(before.kenmerk, "400", recipient=HBAG)

    result = await copies(env, "add", DNB, cert=CBS, key=CBS)
    assert result.exit_code == 0, result.output
    result = await copies(env, "remove", HBAG, cert=CBS, key=CBS)
    assert result.exit_code == 0, result.output

    async def followed() -> bool:
        return gw.registry is not None and gw.registry.current.berichtsoorten[FLOW].copies == [DNB]

    await wait_for(followed, what="registry notified")
    after = await gw.intake.aanleveren(aanlevering(FLOW, sample=sample))
    await env.wait_status(after.kenmerk, "400", recipient=DNB)
    assert await recipients_of(env, after.kenmerk) == {CBS, DNB}
    assert await recipients_of(env, before.kenmerk) == {CBS, HBAG}  # already routed: kept

    # a registry load from the config does not undo the owner's decision
    conn = await env.conn()
    await registry_store.load_config(conn, env.settings.registry, actor="ops")
    snap = await registry_store.snapshot(conn)
    assert snap.berichtsoorten[FLOW].copies == [DNB]

    listed = await asyncio.to_thread(
        CliRunner().invoke,
        main,
        ["flows", "copies", "list", FLOW, "--config", str(env.config_path)],
    )
    assert listed.exit_code == 0 and listed.stdout.split() == [DNB]
    audit = await conn.fetch(
        "SELECT actor, action FROM registry_audit WHERE subject = $1 ORDER BY id", FLOW
    )
    assert [tuple(r) for r in audit][-2:] == [
        (CBS, "flow.copies.add"),
        (CBS, "flow.copies.remove"),
    ]


async def test_non_owner_and_stolen_certificate_are_refused_and_audited(env: Env) -> None:
    result = await copies(env, "add", ALFA, cert=ALFA, key=ALFA)  # ALFA is not the owner
    assert result.exit_code == 2 and "not_owner" in result.output
    result = await copies(env, "add", ALFA, cert=CBS, key=ALFA)  # CBS cert without its key
    assert result.exit_code == 2 and "key_mismatch" in result.output
    result = await copies(env, "add", "00000099999999990000", cert=CBS, key=CBS)
    assert result.exit_code == 2 and "unknown_participant" in result.output

    conn = await env.conn()
    rows = await conn.fetch(
        "SELECT actor, action, detail FROM registry_audit WHERE subject = $1 ORDER BY id", FLOW
    )
    refused = [
        (r["actor"], r["detail"]["reason"]) for r in rows if r["action"] == "flow.copies.refused"
    ]
    assert refused == [
        (ALFA, "not_owner"),
        (f"unverified:{CBS}", "key_mismatch"),
        (CBS, "unknown_participant"),
    ]
    assert await conn.fetchval("SELECT count(*) FROM flow_copies") == 0
    snap = await registry_store.snapshot(conn)
    assert snap.berichtsoorten[FLOW].copies == [HBAG]
