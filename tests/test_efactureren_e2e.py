"""E-invoices end to end over WUS, SMTP and FTP with the real SI-UBL 2.0 rules: a valid
invoice reaches Rijksdienst Inkoop (301, 400); one that breaks the rules gets 311 VAS500
with its rule ids in every status channel (WUS statusinformatieservice, SMTP return mail,
FTP status file) and is delivered nowhere. A berichtsoort whose artefacts are missing is
not started: its envelopes get 321 VAS400."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from structlog.testing import capture_logs

from adapters.wus.client import Bijlage, aanlever_request
from digipoort.devenv import find_standards, link_sample_artefacts
from digipoort.registry import Berichtsoort, Registry, ValidationProfile, ValidationStep
from tests.support import ALFA, RIJKSDIENST_INKOOP, SAMPLES, Env, aanlevering, wait_for
from tests.test_ftp import kenmerk_of, login
from tests.test_smtp import DOMAIN, mail, pop3_messages, submit
from tests.test_wus import Wus
from validators.pool import ValidationPool
from validators.profileset import ProfileSet, ProfileUnavailable

pytestmark = pytest.mark.skipif(find_standards() is None, reason="no ../shared/standards")

VALID = (SAMPLES / "digiinkoop-factuur.xml").read_bytes()
RULES = (SAMPLES / "digiinkoop-factuur-regels.xml").read_bytes()
BROKEN = ("BR-NL-1", "BR-NL-2", "BR-CO-16")
PROFILE = "SI-UBL 2.0 (ubl-2.1 2.1, si-ubl-2.0 2.0.3.12)"


def factuur_request(content: bytes, ref: str) -> Any:
    return aanlever_request(
        berichtsoort="DigiInkoop-Factuur",
        belanghebbende=(ALFA, "OIN"),
        inhoud=Bijlage("text/xml", f"{ref}.xml", content),
        aanleverkenmerk=ref,
    )


def invoice_mail(sample: str, ref: str) -> Any:
    return mail(
        to=f"digiinkoop-factuur@{DOMAIN}",
        subject=f"[V={ALFA}][A={RIJKSDIENST_INKOOP}][K={ref}]",
        sample=sample,
    )


def ftp_upload(env: Env, name: str, content: bytes) -> UUID:
    ftp = login(env)
    try:
        reply = ftp.storbinary(f"STOR /in/DigiInkoop-Factuur/{name}", io.BytesIO(content))
    finally:
        ftp.quit()
    return kenmerk_of(reply)


def ftp_status_file(env: Env, name: str, kenmerk: UUID) -> str:
    ftp = login(env)
    try:
        data: list[bytes] = []
        ftp.retrbinary(f"RETR /out/{name}.{kenmerk}.status.xml", data.append)
    finally:
        ftp.quit()
    return b"".join(data).decode()


async def test_e_invoices_over_wus_smtp_and_ftp(env: Env) -> None:
    await env.start_gateway()
    wus = Wus(env, env.settings.wus.public_url)
    async with wus.client() as client:
        good_wus = UUID((await client.aanleveren(factuur_request(VALID, "wus-goed")))["kenmerk"])
        bad_wus = UUID((await client.aanleveren(factuur_request(RULES, "wus-fout")))["kenmerk"])
        good_smtp = await asyncio.to_thread(
            submit, env, invoice_mail("digiinkoop-factuur.xml", "mail-goed")
        )
        bad_smtp = await asyncio.to_thread(
            submit, env, invoice_mail("digiinkoop-factuur-regels.xml", "mail-fout")
        )
        good_ftp = await asyncio.to_thread(ftp_upload, env, "ftp-goed.xml", VALID)
        bad_ftp = await asyncio.to_thread(ftp_upload, env, "ftp-fout.xml", RULES)

        for kenmerk in (good_wus, good_smtp, good_ftp):
            history = await env.wait_status(kenmerk, "400", recipient=RIJKSDIENST_INKOOP)
            codes = [s.code for s in history]
            assert codes[:5] == ["105", "100", "110", "200", "301"], codes
            assert history[4].details is None  # no warnings on the sample
        for kenmerk in (bad_wus, bad_smtp, bad_ftp):
            history = await env.wait_status(kenmerk, "311")
            refusal = history[-1]
            assert refusal.foutcode == "VAS500" and refusal.details
            for rule in BROKEN:
                assert f"{rule} [fatal]" in refusal.details
            assert refusal.details.endswith(f"validatieprofiel: {PROFILE}")

        conn = await env.conn()
        recorded = dict(
            await conn.fetch(
                "SELECT kenmerk, validatieprofiel FROM envelopes WHERE berichtsoort = $1",
                "DigiInkoop-Factuur",
            )
        )
        assert set(recorded.values()) == {PROFILE} and len(recorded) == 6
        delivered = {
            r["kenmerk"] for r in await conn.fetch("SELECT DISTINCT kenmerk FROM deliveries")
        }
        assert delivered == {good_wus, good_smtp, good_ftp}

        # WUS statusinformatieservice
        statuses = await client.status("getStatussenProces", kenmerk=str(bad_wus))
        (refused,) = [s for s in statuses if s["statuscode"] == "311"]
        assert all(f"{rule} [fatal]" in refused["details"] for rule in BROKEN)

    # SMTP return mail
    async def return_mail() -> str | None:
        msgs = await asyncio.to_thread(pop3_messages, env)
        texts = [m.decode() for m in msgs]
        return next((t for t in texts if "Statuscode: 311" in t), None)

    text = await wait_for(return_mail, what="return mail with 311")
    assert f"Kenmerk: {bad_smtp}" in text
    assert all(f"{rule} [fatal]" in text for rule in BROKEN)

    # FTP status file
    status_xml = await asyncio.to_thread(ftp_status_file, env, "ftp-fout.xml", bad_ftp)
    assert "<statuscode>311</statuscode>" in status_xml
    assert all(f"{rule} [fatal]" in status_xml for rule in BROKEN)
    assert "<statuscode>400</statuscode>" not in status_xml
    assert await env.queue_depth(f"digipoort.aflever.{RIJKSDIENST_INKOOP}") == 3


async def test_warnings_on_301_and_hostile_documents_via_the_stage(env: Env) -> None:
    gw = await env.start_gateway(components=("intake", "validator", "router"))
    assert gw.intake is not None
    warned = VALID.replace(
        b"<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>",
        b"<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>\n"
        b"  <cbc:TaxCurrencyCode>EUR</cbc:TaxCurrencyCode>",
    )
    ok = await gw.intake.aanleveren(aanlevering("DigiInkoop-Factuur", content=warned))
    hostile = await gw.intake.aanleveren(
        aanlevering("DigiInkoop-Factuur", sample="billion-laughs.xml")
    )
    history = await env.wait_status(ok.kenmerk, "400", recipient=RIJKSDIENST_INKOOP)
    (accepted,) = [s for s in history if s.code == "301"]
    assert accepted.details and "BR-NL-19 [warning]" in accepted.details
    assert accepted.details.endswith(f"validatieprofiel: {PROFILE}")
    refused = (await env.wait_status(hostile.kenmerk, "311"))[-1]
    assert refused.details and refused.details.startswith("dtd_forbidden [fatal]")


async def test_missing_artefacts_mean_the_berichtsoort_is_not_started(
    env: Env, tmp_path: Path
) -> None:
    env.settings.validation.artefacts_dir = tmp_path / "empty"
    gw = await env.start_gateway(components=("intake", "validator", "router"))
    assert gw.intake is not None
    accepted = await gw.intake.aanleveren(aanlevering("DigiInkoop-Factuur", content=VALID))
    history = await env.wait_status(accepted.kenmerk, "321")
    assert history[-1].foutcode == "VAS400"
    assert [s.code for s in history][-2:] == ["200", "321"]
    # other berichtsoorten are unaffected
    other = await gw.intake.aanleveren(aanlevering("Omzetbelasting"))
    await env.wait_status(other.kenmerk, "301")
    delivered = await (await env.conn()).fetchval(
        "SELECT count(*) FROM deliveries WHERE kenmerk = $1", accepted.kenmerk
    )
    assert delivered == 0


def registry_with(profile: ValidationProfile) -> Registry:
    soort = Berichtsoort(
        name="X", koppelvlakken=["wus"], recipients=[ALFA], senders=[ALFA], validation=profile
    )
    return Registry.build([], [soort])


async def test_profile_set_names_the_missing_or_broken_file(tmp_path: Path) -> None:
    standards = find_standards()
    assert standards is not None
    art = tmp_path / "standards"
    link_sample_artefacts(art, standards)
    (art / "broken" / "1").mkdir(parents=True)
    (art / "broken" / "1" / "rules.xsl").write_text("<xsl:stylesheet/>")
    missing = ValidationProfile(
        name="M",
        steps=[ValidationStep(kind="xsd", artefact="ubl-2.1", version="2.1", paths=["nope.xsd"])],
    )
    broken = ValidationProfile(
        name="B",
        steps=[
            ValidationStep(kind="schematron", artefact="broken", version="1", paths=["rules.xsl"])
        ],
    )
    profiles = ProfileSet(art, ValidationPool(1))
    try:
        with capture_logs() as logs:
            for profile, named in ((missing, "nope.xsd"), (broken, "rules.xsl")):
                profiles.refresh(registry_with(profile))
                with pytest.raises(ProfileUnavailable, match=named):
                    await profiles.get("X")
        errors = [e for e in logs if e["log_level"] == "error"]
        assert [("nope.xsd" in e["reden"], "rules.xsl" in e["reden"]) for e in errors] == [
            (True, False),
            (False, True),
        ]
        assert all(e["berichtsoort"] == "X" for e in errors)
    finally:
        await profiles.close()
        profiles.pool.shutdown()
