"""The portal in a real browser: Debian's chromium driven by Playwright, logging in with
client certificates (Playwright's ``client_certificates``), checked with axe-core (no
serious or critical WCAG violations). Screenshots of the main pages go to docs/portal/.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium``. axe-core
comes from the npm registry into a cache folder (once), or from ``$AXE_CORE_JS``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from routing.deadletters import list_dead
from tests.support import ALFA, BETA, CBS, HBAG, SAMPLES, wait_for
from tests.test_portal_fixtures import OPERATOR, PortalRun, put_dead_letter, run  # noqa: F401

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "docs" / "portal"
AXE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "digipoort-axe"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


def axe_script() -> Path:
    """axe.min.js: $AXE_CORE_JS, or installed from the npm registry into a cache once."""
    given = os.environ.get("AXE_CORE_JS")
    if given:
        return Path(given)
    target = AXE_CACHE / "node_modules" / "axe-core" / "axe.min.js"
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed: cannot fetch axe-core")
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                npm,
                "install",
                "--prefix",
                str(AXE_CACHE),
                "--no-audit",
                "--no-fund",
                "--silent",
                "axe-core@4",
            ],
            check=True,
            timeout=180,
        )
    return target


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def login(browser: Browser, run: PortalRun, stem: str) -> BrowserContext:
    """A browser context presenting ``<stem>.crt`` to the portal."""
    return await browser.new_context(
        client_certificates=[
            {
                "origin": run.url,
                "certPath": str(run.pki / f"{stem}.crt"),
                "keyPath": str(run.pki / f"{stem}.key"),
            }
        ],
        # Playwright's certificate proxy re-terminates TLS towards the browser
        ignore_https_errors=True,
        viewport={"width": 1280, "height": 900},
    )


async def check_axe(page: Page, name: str) -> None:
    """No serious or critical axe-core violations on the page; a screenshot for the docs.

    The portal's CSP allows scripts from its own origin only (no inline script), so axe is
    served by Playwright's router under the portal's origin instead of inlined."""
    axe = axe_script()
    await page.route(
        "**/__axe__.js",
        lambda route: route.fulfill(path=str(axe), content_type="application/javascript"),
    )
    origin = page.url.split("/", 3)
    await page.add_script_tag(url="/".join(origin[:3]) + "/__axe__.js")
    result: dict[str, Any] = await page.evaluate(
        "async () => await axe.run(document, {resultTypes: ['violations']})"
    )
    bad = [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: {json.dumps(bad, indent=1)}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


async def upload(page: Page, berichtsoort: str, sample: str, **fields: str) -> None:
    await page.select_option("#berichtsoort", berichtsoort)
    for field_id, value in fields.items():
        await page.fill(f"#{field_id}", value)
    await page.set_input_files("#document", str(SAMPLES / sample))


async def test_alfa_validates_submits_and_watches_it_reach_400(
    browser: Browser, run: PortalRun
) -> None:
    ctx = await login(browser, run, ALFA)
    page = await ctx.new_page()
    await page.goto(run.url + "/")
    await expect(page.get_by_role("heading", name="Mijn berichten")).to_be_visible()
    await check_axe(page, "envelopes-empty")

    await page.goto(run.url + "/validate")
    await upload(page, "CBS-Detailhandel", "cbs-detailhandel-invalid.xml")
    await page.get_by_role("button", name="Valideren").click()
    await expect(page.get_by_text("Niet geldig")).to_be_visible()
    await expect(page.locator("table.findings tbody tr").first).to_contain_text("XSD")
    await check_axe(page, "validate-findings")

    await page.goto(run.url + "/submit")
    await check_axe(page, "submit")
    await upload(
        page, "CBS-Detailhandel", "cbs-detailhandel.xml", aanleverkenmerk="<script>x</script>"
    )
    await page.get_by_role("button", name="Aanleveren").click()
    await page.wait_for_url("**/envelopes/*")
    kenmerk = page.url.rsplit("/", 1)[-1].split("?")[0]
    uuid.UUID(kenmerk)
    await expect(page.get_by_text("<script>x</script>")).to_be_visible()  # shown as text
    # the history updates itself until 400 for both recipients
    history = page.locator("#history tbody")
    for oin in (CBS, HBAG):
        row = history.locator("tr", has_text=oin).filter(
            has=page.get_by_role("cell", name="400", exact=True)
        )
        await expect(row).to_have_count(1, timeout=30_000)
    await check_axe(page, "envelope")

    await page.goto(run.url + "/envelopes")
    await expect(page.get_by_role("link", name=kenmerk)).to_be_visible()
    await check_axe(page, "envelopes")
    await page.goto(run.url + "/catalogue")
    await expect(page.get_by_role("cell", name="DigiInkoop-Factuur", exact=True)).to_be_visible()
    await check_axe(page, "catalogue")

    # Beta: not by list, search, URL or API
    beta = await (await login(browser, run, BETA)).new_page()
    await beta.goto(run.url + "/envelopes")
    await expect(beta.get_by_role("link", name=kenmerk)).to_have_count(0)
    await beta.goto(run.url + f"/envelopes?kenmerk={kenmerk}")
    await expect(beta.get_by_role("link", name=kenmerk)).to_have_count(0)
    response = await beta.goto(run.url + f"/envelopes/{kenmerk}")
    assert response is not None and response.status == 404
    unknown = await beta.goto(run.url + f"/envelopes/{uuid.uuid4()}")
    assert unknown is not None and unknown.status == 404
    api = await beta.goto(run.url + f"/api/v1/envelopes/{kenmerk}")
    assert api is not None and api.status == 404
    console = await beta.goto(run.url + f"/console?kenmerk={kenmerk}")
    assert console is not None and console.status == 403


async def test_recipient_downloads_and_reports_500(browser: Browser, run: PortalRun) -> None:
    async with run.session(ALFA) as s:
        from tests.test_portal import submit

        kenmerk = await submit(run, s)
    await run.env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
    page = await (await login(browser, run, CBS)).new_page()
    await page.goto(run.url + "/inbox")
    await check_axe(page, "inbox")
    await page.get_by_role("link", name=kenmerk).click()
    async with page.expect_download() as info:
        await page.get_by_role("link", name="bericht.xml").click()
    download = await info.value
    path = await download.path()
    assert Path(path).read_bytes() == (SAMPLES / "cbs-detailhandel.xml").read_bytes()
    await page.get_by_label("500 — validatie gelukt").check()
    await page.get_by_label("Toelichting (optioneel)").fill("ingelezen")
    await page.get_by_role("button", name="Status melden").click()
    history = page.locator("#history tbody")
    await expect(history.get_by_role("cell", name="500", exact=True)).to_have_count(1)
    await expect(history.get_by_role("cell", name="ingelezen")).to_have_count(1)
    await run.env.wait_status(uuid.UUID(kenmerk), "500", recipient=CBS)


async def test_operator_finds_repushes_retries_and_audits(browser: Browser, run: PortalRun) -> None:
    async with run.session(ALFA) as s:
        from tests.test_portal import submit

        kenmerk = await submit(run, s, aanleverkenmerk="operator-scenario")
    await run.env.wait_status(uuid.UUID(kenmerk), "400", recipient=HBAG)
    conn = await run.env.conn()
    await conn.execute(  # HBAG's push delivery ended in 410
        "UPDATE deliveries SET state = 'failed', channel = 'wus', attempts = 9,"
        " last_error = 'verbinding geweigerd' WHERE kenmerk = $1 AND recipient_oin = $2",
        uuid.UUID(kenmerk),
        HBAG,
    )
    await put_dead_letter(run.env.amqp_url, kenmerk)
    await wait_for(lambda: list_dead(run.env.amqp_url), what="the dead letter")

    page = await (await login(browser, run, OPERATOR)).new_page()
    await page.goto(run.url + "/")
    await expect(page.get_by_role("heading", name="Berichtenlog")).to_be_visible()
    await page.get_by_label("Afzender (OIN)").fill(ALFA)
    await page.get_by_label("Koppelvlak").select_option("portal")
    await page.get_by_role("button", name="Zoeken").click()
    await expect(page.get_by_role("link", name=kenmerk)).to_be_visible()
    await check_axe(page, "console-search")
    await page.get_by_role("link", name=kenmerk).click()
    await expect(page.get_by_role("cell", name="verbinding geweigerd")).to_be_visible()
    await check_axe(page, "console-envelope")

    repush = page.locator("form", has_text=f"Opnieuw afleveren aan {HBAG}")
    await repush.get_by_label("Reden").fill("endpoint HBAG hersteld")
    await repush.get_by_label("Ik bevestig deze actie").check()
    await repush.get_by_role("button", name="Opnieuw afleveren").click()
    await expect(page.get_by_text("Uitgevoerd: repush")).to_be_visible()

    retry = page.locator("form", has_text="Dead letter opnieuw verwerken")
    await retry.get_by_label("Reden").fill("routering hersteld")
    await retry.get_by_label("Ik bevestig deze actie").check()
    await retry.get_by_role("button", name="Dead letter opnieuw verwerken").click()
    await expect(page.get_by_text("Uitgevoerd: retry")).to_be_visible()
    assert await list_dead(run.env.amqp_url) == []

    await page.goto(run.url + "/console/audit")
    rows = page.locator("tbody tr", has_text=kenmerk)
    await expect(rows).to_have_count(2)
    await expect(rows.filter(has_text="repush")).to_contain_text("endpoint HBAG hersteld")
    await expect(rows.filter(has_text="retry")).to_contain_text("routering hersteld")
    await check_axe(page, "console-audit")
    for path, name in (
        ("/console/dead", "console-dead"),
        ("/console/live", "console-live"),
        ("/console/metering", "console-metering"),
    ):
        await page.goto(run.url + path)
        await check_axe(page, name)


@pytest.mark.parametrize("stem", [None, "revoked"])
async def test_no_or_revoked_certificate_cannot_connect(
    browser: Browser, run: PortalRun, stem: str | None
) -> None:
    if stem is None:
        ctx = await browser.new_context(ignore_https_errors=True)
    else:
        ctx = await login(browser, run, stem)
    page = await ctx.new_page()
    try:
        response = await page.goto(run.url + "/envelopes")
    except Exception as exc:  # refused in the TLS handshake
        assert "ERR_" in str(exc)
        return
    # Playwright's certificate proxy answers 503 when the portal refused the handshake;
    # 401 would be the portal's own refusal after it: either way nothing of anyone's data
    assert stem == "revoked" and response is not None and response.status in (401, 503)
    await expect(page.get_by_role("heading", name="Mijn berichten")).to_have_count(0)


async def test_too_large_upload_shows_a_clear_message(browser: Browser, run: PortalRun) -> None:
    settings = run.env.settings.portal
    default = settings.max_upload_bytes
    settings.max_upload_bytes = 1024 * 1024  # read per request
    try:
        page = await (await login(browser, run, ALFA)).new_page()
        await page.goto(run.url + "/submit")
        await page.select_option("#berichtsoort", "CBS-Detailhandel")
        await page.set_input_files("#document", str(SAMPLES / "cbs-detailhandel.xml"))
        await page.set_input_files(
            "#bijlage",
            files=[
                {"name": "scan.pdf", "mimeType": "application/pdf", "buffer": b"\0" * 1_300_000}
            ],
        )
        await page.get_by_role("button", name="Aanleveren").click()
        alert = page.get_by_role("alert")
        await expect(alert).to_contain_text("scan.pdf: groter dan 1.0 MiB (1048576 bytes)")
        assert "/envelopes/" not in page.url
        await check_axe(page, "submit-too-large")
    finally:
        settings.max_upload_bytes = default
