"""The portal over real mutual TLS: identity from the certificate, scoping (someone
else's kenmerk answers like an unknown one), submit/validate through the one intake,
recipients' inbox and zetStatus, operator search, actions and audit, metering, security
headers, CSRF, rate limit and problem+json errors."""

from __future__ import annotations

import ssl
import uuid
from typing import Any

import aiohttp
import pytest

from portal.middleware import RateLimiter
from tests.support import ALFA, BETA, CBS, HBAG, SAMPLES, Env
from tests.test_portal_fixtures import OPERATOR, PortalRun, configure, run  # noqa: F401

SAMPLE = (SAMPLES / "cbs-detailhandel.xml").read_bytes()


def upload_form(
    token: str, berichtsoort: str, content: bytes, *, name: str = "bericht.xml", **fields: str
) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("csrf_token", token)
    form.add_field("berichtsoort", berichtsoort)
    for k, v in fields.items():
        form.add_field(k, v)
    form.add_field("document", content, filename=name, content_type="text/xml")
    return form


async def submit(
    run: PortalRun, s: aiohttp.ClientSession, content: bytes = SAMPLE, **kw: str
) -> str:
    token = await run.csrf(s)
    async with s.post(
        "/api/v1/envelopes", data=upload_form(token, "CBS-Detailhandel", content, **kw)
    ) as r:
        body = await r.json()
        assert r.status == 201, body
        return str(body["kenmerk"])


async def get_json(s: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with s.get(path) as r:
        assert r.status == status, (path, r.status, await r.text())
        return await r.json(content_type=None)


async def test_identity_and_headers(run: PortalRun) -> None:
    async with run.session(ALFA) as s, s.get("/api/v1/me") as r:
        me = await r.json()
        assert me["oin"] == ALFA and not me["operator"] and me["participant"]
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["X-Frame-Options"] == "DENY"
    async with run.session(OPERATOR) as s:
        me = await get_json(s, "/api/v1/me")
        assert me["operator"] and not me["participant"]


async def test_bad_certificates_cannot_connect(run: PortalRun) -> None:
    pki = run.pki
    for stem in (None, "revoked", "expired", "untrusted"):
        if stem == "untrusted":
            ctx = run.ssl(None)
            ctx.load_cert_chain(pki / "untrusted.crt", pki / "untrusted.key")
        else:
            ctx = run.ssl(stem)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                async with s.get(run.url + "/api/v1/me") as r:
                    await r.read()


async def test_submit_scoping_and_live_history(run: PortalRun) -> None:
    async with run.session(ALFA) as alfa, run.session(BETA) as beta:
        kenmerk = await submit(run, alfa, aanleverkenmerk="<script>alert(1)</script>")
        await run.env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
        mine = await get_json(alfa, "/api/v1/envelopes")
        assert [e["kenmerk"] for e in mine["items"]] == [kenmerk]
        assert mine["items"][0]["koppelvlak"] == "portal"
        detail = await get_json(alfa, f"/api/v1/envelopes/{kenmerk}")
        assert {s["code"] for s in detail["statuses"]} >= {"100", "301", "400"}
        newer = await get_json(
            alfa, f"/api/v1/envelopes/{kenmerk}/statuses?after={detail['statuses'][2]['id']}"
        )
        assert all(s["id"] > detail["statuses"][2]["id"] for s in newer["items"])
        async with alfa.get(f"/envelopes/{kenmerk}") as r:
            html = await r.text()
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html
        async with alfa.get(f"/envelopes/{kenmerk}/documents/0") as r:
            assert r.status == 200 and await r.read() == SAMPLE
        # Beta: not in its list, search, URL or API — exactly like an unknown kenmerk
        assert (await get_json(beta, "/api/v1/envelopes"))["items"] == []
        assert (await get_json(beta, f"/api/v1/envelopes?kenmerk={kenmerk}"))["items"] == []
        unknown = await get_json(beta, f"/api/v1/envelopes/{uuid.uuid4()}", 404)
        theirs = await get_json(beta, f"/api/v1/envelopes/{kenmerk}", 404)
        assert {k: v for k, v in theirs.items() if k != "instance"} == {
            k: v for k, v in unknown.items() if k != "instance"
        }
        await get_json(beta, f"/api/v1/envelopes/{kenmerk}/documents/0", 404)
        await get_json(beta, "/api/v1/search", 403)
        async with beta.get(f"/envelopes/{kenmerk}") as r:
            assert r.status == 404


async def test_validate_only_and_311_findings(run: PortalRun) -> None:
    bad = (SAMPLES / "cbs-detailhandel-invalid.xml").read_bytes()
    async with run.session(ALFA) as s:
        token = await run.csrf(s)
        async with s.post(
            "/api/v1/validate", data=upload_form(token, "CBS-Detailhandel", bad)
        ) as r:
            result = await r.json()
            assert r.status == 200 and result["valid"] is False
            assert result["findings"] and result["findings"][0]["rule"] == "XSD"
        async with s.post(
            "/api/v1/validate", data=upload_form(token, "CBS-Detailhandel", SAMPLE)
        ) as r:
            assert (await r.json()) == {"valid": True, "findings": []}
        before = await get_json(s, "/api/v1/envelopes")
        assert before["items"] == []  # validating submits nothing
        kenmerk = await submit(run, s, bad)
        await run.env.wait_status(uuid.UUID(kenmerk), "311")
        detail = await get_json(s, f"/api/v1/envelopes/{kenmerk}")
        assert [f["rule"] for f in detail["findings"]] == [
            f["rule"] for f in result["findings"]
        ] or detail["findings"]


async def test_refusals_and_csrf(run: PortalRun) -> None:
    async with run.session(BETA) as s:
        token = await run.csrf(s)
        # Beta may not send DigiInkoop-Factuur: refused like every koppelvlak refuses
        form = upload_form(token, "DigiInkoop-Factuur", SAMPLE)
        async with s.post("/api/v1/envelopes", data=form) as r:
            problem = await r.json(content_type=None)
            assert r.status == 422 and r.content_type == "application/problem+json"
            assert problem["status"] == 422 and problem["type"].endswith("berichtsoort")
        form = upload_form("wrong", "CBS-Detailhandel", SAMPLE)
        async with s.post("/api/v1/envelopes", data=form) as r:
            assert r.status == 403
        async with s.post(f"/api/v1/inbox/{uuid.uuid4()}/status", json={"code": "500"}) as r:
            assert r.status == 403  # no CSRF header
        async with s.post("/submit", data={"berichtsoort": "x"}) as r:
            assert r.status == 403


async def test_recipient_inbox_download_and_zetstatus(run: PortalRun) -> None:
    async with (
        run.session(ALFA) as alfa,
        run.session(HBAG) as hbag,
        run.session(BETA) as beta,
    ):
        kenmerk = await submit(run, alfa)
        await run.env.wait_status(uuid.UUID(kenmerk), "400", recipient=HBAG)
        inbox = await get_json(hbag, "/api/v1/inbox")
        assert [m["kenmerk"] for m in inbox["items"]] == [kenmerk]
        async with hbag.get(f"/api/v1/envelopes/{kenmerk}/documents/0") as r:
            assert r.status == 200 and await r.read() == SAMPLE
        token = await run.csrf(hbag)
        async with hbag.post(
            f"/api/v1/inbox/{kenmerk}/status",
            json={"code": "500", "details": "verwerkt"},
            headers={"X-CSRF-Token": token},
        ) as r:
            assert r.status == 201
        history = await run.env.wait_status(uuid.UUID(kenmerk), "500", recipient=HBAG)
        assert any(s.details == "verwerkt" for s in history)
        # a non-recipient cannot report, and gets the same 404 as for an unknown kenmerk
        token = await run.csrf(beta)
        async with beta.post(
            f"/api/v1/inbox/{kenmerk}/status", json={"code": "500"}, headers={"X-CSRF-Token": token}
        ) as r:
            assert r.status == 404


async def test_operator_search_repush_audit_and_metering(run: PortalRun) -> None:
    env = run.env
    async with run.session(ALFA) as alfa, run.session(OPERATOR) as op:
        kenmerk = await submit(run, alfa)
        await env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
        found = await get_json(op, f"/api/v1/search?sender={ALFA}&koppelvlak=portal&status=400")
        assert [e["kenmerk"] for e in found["items"]] == [kenmerk]
        assert (await get_json(op, f"/api/v1/search?recipient={HBAG}&status=510"))["items"] == []
        # a push delivery that ended in 410 (made so in the database): re-push it
        conn = await env.conn()
        await conn.execute(
            "UPDATE deliveries SET state = 'failed', channel = 'wus', attempts = 7"
            " WHERE kenmerk = $1 AND recipient_oin = $2",
            uuid.UUID(kenmerk),
            HBAG,
        )
        detail = await get_json(op, f"/api/v1/envelopes/{kenmerk}")
        assert any(d["repushable"] for d in detail["deliveries"])
        token = await run.csrf(op)
        headers = {"X-CSRF-Token": token}
        path = f"/api/v1/envelopes/{kenmerk}/actions/repush"
        async with op.post(path, json={"recipient": HBAG, "reason": "x"}, headers=headers) as r:
            assert r.status == 422  # not confirmed
        async with op.post(
            path,
            json={"recipient": HBAG, "reason": "endpoint hersteld", "confirm": True},
            headers=headers,
        ) as r:
            assert r.status == 200, await r.text()
        # the deliverer is woken and tries again (HBAG has no push endpoint: a new 420)
        await env.wait_status(uuid.UUID(kenmerk), "420", recipient=HBAG)
        async with op.post(
            path, json={"recipient": HBAG, "reason": "nog eens", "confirm": True}, headers=headers
        ) as r:
            assert r.status == 409  # pending again: nothing to re-push
        audit = (await get_json(op, "/api/v1/audit"))["items"]
        assert [(a["action"], a["reason"], a["outcome"]) for a in audit] == [
            ("repush", "nog eens", "nothing to do"),
            ("repush", "endpoint hersteld", "done"),
        ]
        assert {a["operator"] for a in audit} == {"00000099300000020000"}
        meter = await get_json(op, "/api/v1/metering")
        lines = {x["organisation"]: x for x in meter["lines"]}
        assert lines[ALFA]["aangeleverd"] == 1 and lines[ALFA]["amount_eur"] != "0.00"
        assert lines[CBS]["afgeleverd"] == 1 and lines[CBS]["amount_eur"] == "0.00"
        async with op.get("/api/v1/metering.csv") as r:
            assert r.status == 200 and ALFA in await r.text()
        live = await get_json(op, "/api/v1/live")
        assert any(q["name"].startswith("digipoort.") for q in live["queues"])
        assert live["expiry"]
        # participants never reach the console
        await get_json(alfa, "/api/v1/audit", 403)
        await get_json(alfa, "/api/v1/live", 403)


async def test_bad_input_gets_problem_json(run: PortalRun) -> None:
    async with run.session(ALFA) as s:
        for path in (
            "/api/v1/envelopes?cursor=zzz",
            "/api/v1/envelopes?since=gisteren",
            "/api/v1/envelopes?status=4000",
            "/api/v1/envelopes?limit=0",
            "/api/v1/envelopes?berichtsoort=%00",
            "/api/v1/envelopes/not-a-kenmerk",
            "/api/v1/nothing",
        ):
            async with s.get(path) as r:
                assert r.status in (400, 404), path
                assert r.content_type == "application/problem+json", path
                body = await r.json(content_type=None)
                assert body["status"] == r.status


async def test_rate_limit(env: Env) -> None:
    port = configure(env)
    env.settings.portal.rate_limit_per_minute = 5
    limited = PortalRun(env, await env.start_gateway(("intake", "portal")), port)
    async with limited.session(BETA) as s:
        statuses = []
        for _ in range(6):
            async with s.get("/api/v1/catalogue") as r:
                statuses.append(r.status)
                retry_after = r.headers.get("Retry-After")
        assert statuses == [200] * 5 + [429]
        assert retry_after is not None and int(retry_after) >= 1
    async with limited.session(ALFA) as s, s.get("/api/v1/catalogue") as r:
        assert r.status == 200  # per caller


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(60)
    assert all(limiter.allow("a", now=0.0) == 0 for _ in range(60))
    assert limiter.allow("a", now=0.0) > 0
    assert limiter.allow("a", now=1.01) == 0


async def test_validate_only_with_a_validation_profile(run: PortalRun) -> None:
    """DigiInkoop-Factuur (SI-UBL 2.0 profile): the Schematron findings with rule ids."""
    if not (run.env.dir / "standards").exists():
        pytest.skip("validation artefacts not installed (../shared/standards)")
    bad = (SAMPLES / "digiinkoop-factuur-regels.xml").read_bytes()  # breaks business rules
    good = (SAMPLES / "digiinkoop-factuur.xml").read_bytes()
    async with run.session(ALFA) as s:
        token = await run.csrf(s)
        form = upload_form(token, "DigiInkoop-Factuur", bad)
        async with s.post("/api/v1/validate", data=form) as r:
            result = await r.json()
            assert r.status == 200, result
        assert result["valid"] is False
        rules = {f["rule"] for f in result["findings"] if f["severity"] == "fatal"}
        assert rules and "XSD" not in rules, result["findings"][:3]  # Schematron rule ids
        async with s.post(
            "/api/v1/validate", data=upload_form(token, "DigiInkoop-Factuur", good)
        ) as r:
            assert (await r.json())["valid"] is True
