"""The console shows the deliverers' real circuit breakers: each deliverer records its
breaker openings in ``circuit_breakers`` and the portal (another process in production)
reads them from there, not from its own process."""

from __future__ import annotations

from typing import Any

from tests.support import BELASTINGDIENST, DNB, Env, aanlevering, free_port, set_aflever, wait_for
from tests.test_portal_fixtures import OPERATOR, PortalRun, configure

BD = BELASTINGDIENST
DELIVERING = ("intake", "sweeper", "validator", "router", "deliverer")


async def test_console_shows_the_deliverers_breakers(env: Env) -> None:
    # Belastingdienst receives by push, at an address where nothing listens
    await set_aflever(env, BD, "wus", f"https://localhost:{free_port()}/afleverservice")
    a = env.settings.aflever
    a.base_delay_seconds, a.max_delay_seconds, a.timeout_seconds = 0.2, 0.5, 5.0
    a.breaker_failures, a.breaker_reset_seconds = 1, 3600.0
    port = configure(env)
    deliverer = await env.start_gateway(DELIVERING)
    # the portal in a gateway of its own, without a deliverer
    portal = PortalRun(env, await env.start_gateway(("portal",), serve_http=False), port)
    assert deliverer.intake is not None
    kenmerk = (await deliverer.intake.aanleveren(aanlevering("Omzetbelasting"))).kenmerk
    conn = await env.conn()

    async def recorded() -> Any:
        return await conn.fetchrow("SELECT * FROM circuit_breakers WHERE recipient_oin = $1", BD)

    row = await wait_for(recorded, timeout=30, what="the breaker recorded as open")
    assert row["reset_seconds"] == 3600.0 and row["last_error"]
    # a breaker held by a deliverer in another process, past its reset: half-open
    await conn.execute(
        "INSERT INTO circuit_breakers (recipient_oin, deliverer, opened_at, reset_seconds)"
        " VALUES ($1, 'elders:1:x', now() - interval '2 hours', 60)",
        DNB,
    )
    async with portal.session(OPERATOR) as op:
        async with op.get("/api/v1/live") as r:
            live = await r.json()
        assert live["breakers"] == [
            {"recipient": BD, "state": "open"},
            {"recipient": DNB, "state": "half_open"},
        ]
        async with op.get(f"/api/v1/envelopes/{kenmerk}") as r:
            detail = await r.json()
        assert [(d["recipient"], d["breaker"]) for d in detail["deliveries"]] == [(BD, "open")]
        async with op.get("/console/live") as r:
            html = await r.text()
        assert BD in html and "half_open" in html
        # a deliverer that stops takes its breakers with it
        await deliverer.stop()
        env.gateways.remove(deliverer)
        async with op.get("/api/v1/live") as r:
            live = await r.json()
        assert live["breakers"] == [{"recipient": DNB, "state": "half_open"}]
        async with op.get(f"/api/v1/envelopes/{kenmerk}") as r:
            detail = await r.json()
        assert [(d["recipient"], d["breaker"]) for d in detail["deliveries"]] == [(BD, "closed")]
