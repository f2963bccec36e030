"""The portal over real mutual TLS: identity from the certificate, scoping (someone
else's kenmerk answers like an unknown one), submit/validate through the one intake,
recipients' inbox and zetStatus, operator search, actions and audit, metering, security
headers, CSRF, rate limit and problem+json errors."""

from __future__ import annotations

import ssl
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from portal.component import build_context
from portal.metering import close_previous_month
from portal.middleware import RateLimiter
from routing.deadletters import list_dead
from tests.support import ALFA, BETA, CBS, HBAG, SAMPLES, Env, unique_aanleverkenmerk, wait_for
from tests.test_portal_fixtures import (  # noqa: F401
    OPERATOR,
    PortalRun,
    configure,
    put_dead_letter,
    run,
)

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
    """Submit over the API; a unique aanleverkenmerk unless one is given (the module's
    tests share one gateway: the same document again would be a resubmission)."""
    kw.setdefault("aanleverkenmerk", unique_aanleverkenmerk("portal"))
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
        script = f"<script>alert({uuid.uuid4().hex[:6]})</script>"
        kenmerk = await submit(run, alfa, aanleverkenmerk=script)
        await run.env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
        mine = await get_json(alfa, "/api/v1/envelopes")
        assert mine["items"][0]["kenmerk"] == kenmerk  # newest first
        assert {e["sender"] for e in mine["items"]} == {ALFA}
        async with alfa.get("/api/v1/envelopes", params={"aanleverkenmerk": script}) as r:
            found = (await r.json())["items"]
        assert [e["kenmerk"] for e in found] == [kenmerk]
        assert found[0]["koppelvlak"] == "portal"
        detail = await get_json(alfa, f"/api/v1/envelopes/{kenmerk}")
        assert {s["code"] for s in detail["statuses"]} >= {"100", "301", "400"}
        newer = await get_json(
            alfa, f"/api/v1/envelopes/{kenmerk}/statuses?after={detail['statuses'][2]['id']}"
        )
        assert all(s["id"] > detail["statuses"][2]["id"] for s in newer["items"])
        async with alfa.get(f"/envelopes/{kenmerk}") as r:
            html = await r.text()
            escaped = script.replace("<", "&lt;").replace(">", "&gt;")
            assert escaped in html and "<script>alert" not in html
        async with alfa.get(f"/envelopes/{kenmerk}/documents/0") as r:
            assert r.status == 200 and await r.read() == SAMPLE
        # Beta: not in its list, search, URL or API — exactly like an unknown kenmerk
        theirs_list = (await get_json(beta, "/api/v1/envelopes?limit=200"))["items"]
        assert kenmerk not in {e["kenmerk"] for e in theirs_list}
        assert {e["sender"] for e in theirs_list} <= {BETA}
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
    # validating submits nothing
    envelopes_before = await (await run.env.conn()).fetchval("SELECT count(*) FROM envelopes")
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
        conn = await run.env.conn()
        assert await conn.fetchval("SELECT count(*) FROM envelopes") == envelopes_before
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
        assert inbox["items"][0]["kenmerk"] == kenmerk  # the newest delivery first
        assert {m["kenmerk"] for m in (await get_json(beta, "/api/v1/inbox"))["items"]}.isdisjoint(
            {kenmerk}
        )
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
        mine = unique_aanleverkenmerk("op")
        kenmerk = await submit(run, alfa, aanleverkenmerk=mine)
        await env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
        found = await get_json(
            op, f"/api/v1/search?sender={ALFA}&koppelvlak=portal&status=400&aanleverkenmerk={mine}"
        )
        assert [e["kenmerk"] for e in found["items"]] == [kenmerk]
        latest = await get_json(op, f"/api/v1/search?sender={ALFA}&koppelvlak=portal&status=400")
        assert latest["items"][0]["kenmerk"] == kenmerk
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
        audit = [
            a for a in (await get_json(op, "/api/v1/audit"))["items"] if a["kenmerk"] == kenmerk
        ]
        assert [(a["action"], a["reason"], a["outcome"]) for a in audit] == [
            ("repush", "nog eens", "nothing to do"),
            ("repush", "endpoint hersteld", "done"),
        ]
        assert {a["operator"] for a in audit} == {"00000099300000020000"}
        meter = await get_json(op, "/api/v1/metering")
        assert meter["closed"] is False  # the running month is provisional
        lines = {x["organisation"]: x for x in meter["lines"]}
        sent = await conn.fetchval(
            "SELECT count(*) FROM envelopes WHERE sender_oin = $1"
            " AND tijdstempel_aangeleverd >= date_trunc('month', now())",
            ALFA,
        )
        delivered = await conn.fetchval(
            "SELECT count(*) FROM statuses WHERE recipient_oin = $1 AND code = '400'"
            " AND tijdstempel >= date_trunc('month', now())",
            CBS,
        )
        assert sent >= 1 and delivered >= 1
        assert lines[ALFA]["aangeleverd"] == sent
        assert (
            lines[ALFA]["amount_eur"]
            == f"{Decimal('0.59') * (sent + lines[ALFA]['afgeleverd']):.2f}"
        )
        assert lines[CBS]["afgeleverd"] == delivered and lines[CBS]["amount_eur"] == "0.00"
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


async def test_operator_discards_a_dead_letter_confirmed_and_audited(run: PortalRun) -> None:
    env = run.env
    async with run.session(ALFA) as alfa, run.session(OPERATOR) as op:
        kenmerk = await submit(run, alfa)
        await env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS)
        await put_dead_letter(env.amqp_url, kenmerk, reason="routeringstabel geblokkeerd")
        await wait_for(
            lambda: _dead_kenmerken(env.amqp_url, kenmerk), what="the dead letter in the queue"
        )
        headers = {"X-CSRF-Token": await run.csrf(op)}
        path = f"/api/v1/envelopes/{kenmerk}/actions/discard"
        # not confirmed, or no reason: refused, nothing happens
        async with op.post(path, json={"reason": "onherstelbaar"}, headers=headers) as r:
            assert r.status == 422 and (await r.json())["type"].endswith("confirm-required")
        async with op.post(path, json={"reason": "  ", "confirm": True}, headers=headers) as r:
            assert r.status == 422 and (await r.json())["type"].endswith("reason-required")
        assert await _dead_kenmerken(env.amqp_url, kenmerk)
        # a participant may not discard
        async with alfa.post(
            path,
            json={"reason": "weg ermee", "confirm": True},
            headers={"X-CSRF-Token": await run.csrf(alfa)},
        ) as r:
            assert r.status == 403
        # the page form: confirmed, with a reason
        token = headers["X-CSRF-Token"]
        async with op.post(
            f"/console/envelopes/{kenmerk}/discard",
            data={"csrf_token": token, "reason": "bericht onherstelbaar", "confirm": "yes"},
            allow_redirects=False,
        ) as r:
            assert r.status == 303 and r.headers["Location"].endswith("?done=discard")
        assert not await _dead_kenmerken(env.amqp_url, kenmerk)
        # a second discard finds nothing (and that is audited too)
        async with op.post(
            path, json={"reason": "nog eens", "confirm": True}, headers=headers
        ) as r:
            assert r.status == 409
        audit = [
            a for a in (await get_json(op, "/api/v1/audit"))["items"] if a["kenmerk"] == kenmerk
        ]
        assert [(a["action"], a["reason"], a["outcome"]) for a in audit] == [
            ("discard", "nog eens", "nothing to do"),
            ("discard", "bericht onherstelbaar", "done"),
        ]
        me = await get_json(op, "/api/v1/me")
        assert {a["operator"] for a in audit} == {me["oin"]}
        assert all(len(a["fingerprint"]) == 64 for a in audit)
        # the dead-letter log has the operator as actor; the history the final status
        conn = await env.conn()
        actors = await conn.fetch(
            "SELECT actor, action, reason FROM dead_letter_actions WHERE kenmerk = $1", kenmerk
        )
        assert [(r["action"], r["reason"]) for r in actors] == [
            ("discard", "bericht onherstelbaar")
        ]
        assert actors[0]["actor"].startswith(f"portal:{me['oin']}:")
        history = await env.history(uuid.UUID(kenmerk))
        final = [s for s in history if s.code == "410" and s.recipient_oin is None]
        assert final and "door beheer afgevoerd" in (final[-1].foutbeschrijving or "")
        detail = await get_json(op, f"/api/v1/envelopes/{kenmerk}")
        assert [a["action"] for a in detail["audit"]] == ["discard", "discard"]


async def _dead_kenmerken(amqp_url: str, kenmerk: str) -> bool:
    return any(letter.kenmerk == kenmerk for letter in await list_dead(amqp_url))


def _xml_of_size(size: int) -> bytes:
    """The valid sample padded (an XML comment) to ``size`` bytes."""
    pad = size - len(SAMPLE) - len(b"<!---->\n")
    assert pad > 0
    head, rest = SAMPLE.split(b"?>", 1)
    return head + b"?>\n<!--" + b"x" * pad + b"-->" + rest


async def _chunks(data: bytes, size: int = 256 * 1024) -> Any:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_large_submission_with_bijlagen_streamed_and_fetched_as_grote_berichten(
    run: PortalRun,
) -> None:
    """A document and two bijlagen of several MiB: streamed to the payload store (not
    kept in PostgreSQL), delivered by reference (above grote_berichten.threshold_bytes);
    the recipient downloads one through its inbox, recorded as a fetch (402)."""
    env = run.env
    document = _xml_of_size(3 * 1024 * 1024 + 17)
    bijlagen = [uuid.uuid4().bytes * (3 * 1024 * 1024 // 16 + i) for i in range(2)]
    async with (
        run.session(ALFA) as alfa,
        run.session(CBS) as cbs,
        run.session(BETA) as beta,
        run.session(OPERATOR) as op,
    ):
        form = aiohttp.FormData()
        form.add_field("csrf_token", await run.csrf(alfa))
        form.add_field("berichtsoort", "CBS-Detailhandel")
        form.add_field("aanleverkenmerk", unique_aanleverkenmerk("groot"))
        form.add_field("document", _chunks(document), filename="groot.xml", content_type="text/xml")
        for i, b in enumerate(bijlagen):
            form.add_field(
                "bijlage", _chunks(b), filename=f"bijlage-{i}.pdf", content_type="application/pdf"
            )
        async with alfa.post("/api/v1/envelopes", data=form) as r:
            body = await r.json()
            assert r.status == 201, body
        kenmerk = body["kenmerk"]
        await env.wait_status(uuid.UUID(kenmerk), "400", recipient=CBS, timeout=60)
        conn = await env.conn()
        docs = await conn.fetch(
            "SELECT seq, size, bestandsnaam, data IS NULL AS streamed FROM documents"
            " WHERE kenmerk = $1 ORDER BY seq",
            uuid.UUID(kenmerk),
        )
        assert [(d["seq"], d["size"], d["bestandsnaam"], d["streamed"]) for d in docs] == [
            (0, len(document), "groot.xml", True),
            (1, len(bijlagen[0]), "bijlage-0.pdf", True),
            (2, len(bijlagen[1]), "bijlage-1.pdf", True),
        ]
        references = await conn.fetchval(
            "SELECT count(*) FROM gb_references WHERE kenmerk = $1", uuid.UUID(kenmerk)
        )
        assert references == 3
        # the recipient, from its inbox: the bijlage, whole
        inbox = await get_json(cbs, "/api/v1/inbox")
        assert kenmerk in {m["kenmerk"] for m in inbox["items"]}
        async with cbs.get(f"/envelopes/{kenmerk}/documents/2") as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(bijlagen[1])
            assert await r.read() == bijlagen[1]
        history = await env.wait_status(uuid.UUID(kenmerk), "402", recipient=CBS)
        assert [s.details for s in history if s.code == "402"] == ["document 2 opgehaald"]
        async with cbs.get(f"/api/v1/envelopes/{kenmerk}/documents/2") as r:
            assert await r.read() == bijlagen[1]  # again: counted, no second 402

        async def fetched_twice() -> Any:
            row = await conn.fetchrow(
                "SELECT requests, bytes_sent, first_complete_at FROM gb_fetches"
                " WHERE kenmerk = $1 AND seq = 2 AND recipient_oin = $2",
                uuid.UUID(kenmerk),
                CBS,
            )
            return row if row is not None and row["requests"] == 2 else None

        # recorded once the response is written: wait for it
        fetch = await wait_for(fetched_twice, what="the second fetch recorded")
        assert fetch is not None and fetch["requests"] == 2
        assert fetch["bytes_sent"] == 2 * len(bijlagen[1]) and fetch["first_complete_at"]
        history = await env.history(uuid.UUID(kenmerk))
        assert len([s for s in history if s.code == "402"]) == 1
        # the sender downloads its own document: not a recipient's fetch
        async with alfa.get(f"/api/v1/envelopes/{kenmerk}/documents/0") as r:
            assert await r.read() == document
        assert not await conn.fetchval(
            "SELECT count(*) FROM gb_fetches WHERE kenmerk = $1 AND recipient_oin = $2",
            uuid.UUID(kenmerk),
            ALFA,
        )
        await get_json(beta, f"/api/v1/envelopes/{kenmerk}/documents/2", 404)
        # the operator sees who fetched it
        detail = await get_json(op, f"/api/v1/envelopes/{kenmerk}")
        assert [(f["seq"], f["recipient"], f["requests"]) for f in detail["fetches"]] == [
            (2, CBS, 2)
        ]
        # an expired reference answers 410, as the Grote Berichten endpoint does
        await conn.execute(
            "UPDATE gb_references SET expires_at = now() - interval '1 second' WHERE kenmerk = $1",
            uuid.UUID(kenmerk),
        )
        problem = await get_json(cbs, f"/api/v1/envelopes/{kenmerk}/documents/1", 410)
        assert problem["type"].endswith("expired")


def _refused_uploads(reason: str) -> float:
    return (
        REGISTRY.get_sample_value("digipoort_portal_uploads_refused_total", {"reason": reason})
        or 0.0
    )


async def test_too_large_upload_refused_with_413_on_api_and_page(run: PortalRun) -> None:
    env = run.env
    limit = 2 * 1024 * 1024
    default = env.settings.portal.max_upload_bytes
    env.settings.portal.max_upload_bytes = limit  # read per request
    conn = await env.conn()
    before = await conn.fetchval("SELECT count(*) FROM envelopes")
    counted = _refused_uploads("too-large")
    try:
        async with run.session(ALFA) as alfa:
            token = await run.csrf(alfa)
            too_big = b"\0" * (limit + 1)
            with capture_logs() as logs:
                form = upload_form(token, "CBS-Detailhandel", SAMPLE)
                form.add_field(
                    "bijlage",
                    _chunks(too_big),
                    filename="te-groot.pdf",
                    content_type="application/pdf",
                )
                async with alfa.post("/api/v1/envelopes", data=form) as r:
                    problem = await r.json(content_type=None)
                    assert r.status == 413 and r.content_type == "application/problem+json"
                    assert problem["type"].endswith("too-large")
                    assert "te-groot.pdf" in problem["detail"]
            assert any(
                e["event"] == "portal.upload_refused" and e["reason"] == "too-large" for e in logs
            )
            assert _refused_uploads("too-large") == counted + 1
            # the page: the form again, with the message
            form = upload_form(token, "CBS-Detailhandel", _xml_of_size(limit + 10))
            async with alfa.post("/submit", data=form) as r:
                html = await r.text()
                assert r.status == 413 and r.content_type == "text/html"
                assert 'role="alert"' in html and "groter dan" in html
                assert "Per bestand maximaal 2.0 MiB" in html
            assert _refused_uploads("too-large") == counted + 2
            # the connection is still good for the next request
            async with alfa.get("/api/v1/me") as r:
                assert r.status == 200
        assert await conn.fetchval("SELECT count(*) FROM envelopes") == before
    finally:
        env.settings.portal.max_upload_bytes = default


async def test_a_closed_month_stays_fixed_in_the_ledger_and_csv(run: PortalRun) -> None:
    """A past month is closed into metering_ledger once; later changes to that month's
    data do not move its figures, and the CSV says so."""
    env = run.env
    conn = await env.conn()
    month = "2025-09"
    in_month = datetime(2025, 9, 15, 12, 0, tzinfo=UTC)
    async with run.session(ALFA) as alfa, run.session(OPERATOR) as op:
        kenmerken = [await submit(run, alfa) for _ in range(3)]
        for k in kenmerken:
            await env.wait_status(uuid.UUID(k), "400", recipient=CBS)
        # the first one happened in that month (sent, and delivered to CBS and HBAG)
        first = uuid.UUID(kenmerken[0])
        await conn.execute(
            "UPDATE envelopes SET tijdstempel_aangeleverd = $2 WHERE kenmerk = $1",
            first,
            in_month,
        )
        await conn.execute(
            "UPDATE statuses SET tijdstempel = $2 WHERE kenmerk = $1",
            first,
            in_month,
        )
        report = await get_json(op, f"/api/v1/metering?month={month}")
        assert report["closed"] is True
        lines = {x["organisation"]: x for x in report["lines"]}
        assert (lines[ALFA]["aangeleverd"], lines[ALFA]["amount_eur"]) == (1, "0.59")
        assert (lines[CBS]["afgeleverd"], lines[CBS]["amount_eur"]) == (1, "0.00")
        assert await conn.fetchval(
            "SELECT count(*) FROM metering_ledger WHERE month = '2025-09-01'"
        ) == len(lines)
        # later, more turns up in that month: the closed month does not change
        second = uuid.UUID(kenmerken[1])
        await conn.execute(
            "UPDATE envelopes SET tijdstempel_aangeleverd = $2 WHERE kenmerk = $1",
            second,
            in_month,
        )
        await conn.execute(
            "UPDATE statuses SET tijdstempel = $2 WHERE kenmerk = $1",
            second,
            in_month,
        )
        again = await get_json(op, f"/api/v1/metering?month={month}")
        assert again == report
        async with op.get(f"/api/v1/metering.csv?month={month}") as r:
            assert r.status == 200 and r.content_type == "text/csv"
            assert f'filename="metering-{month}.csv"' in r.headers["Content-Disposition"]
            rows = [line.split(",") for line in (await r.text()).splitlines()]
        assert rows[0][-1] == "afgesloten"
        by_oin = {row[1]: row for row in rows[1:]}
        assert by_oin[ALFA][0] == month
        assert by_oin[ALFA][3:] == ["1", "0", "nee", "0.5900", "0.59", "ja"]
        assert by_oin[CBS][3:5] == ["0", "1"] and by_oin[CBS][5:] == ["ja", "0.5900", "0.00", "ja"]
        # the page shows the same closed figures
        async with op.get(f"/console/metering?month={month}") as r:
            html = await r.text()
            assert r.status == 200 and ALFA in html
        # the hourly closer closes last month even when nobody asked for it
        third = uuid.UUID(kenmerken[2])
        august = datetime(2025, 8, 31, 23, 59, tzinfo=UTC)
        await conn.execute(
            "UPDATE envelopes SET tijdstempel_aangeleverd = $2 WHERE kenmerk = $1", third, august
        )
        ctx = build_context(run.gateway)
        assert await close_previous_month(ctx, today=date(2025, 9, 1)) is True
        assert await close_previous_month(ctx, today=date(2025, 9, 1)) is False
        assert (
            await conn.fetchval(
                "SELECT aangeleverd FROM metering_ledger WHERE month = '2025-08-01'"
                " AND organisation_oin = $1",
                ALFA,
            )
            == 1
        )
        # a month still running is never closed
        assert (await get_json(op, "/api/v1/metering"))["closed"] is False
        # a future month cannot be asked for
        await get_json(op, "/api/v1/metering?month=2999-01", 422)
