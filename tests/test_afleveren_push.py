"""Push delivery to a WUS AfleverService: real TLS, real signed SOAP over real sockets.

The recipient runs the reference ``aflever-server`` (adapters/wus/afleverserver.py) with
its own test certificate; the gateway's ``deliverer`` pushes, retries with backoff (state
in ``deliveries``), trips a circuit breaker and gives up with 410 after the recipient's
retry window.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest
from prometheus_client import REGISTRY

from adapters.wus.afleverserver import AfleverServer
from digipoort.app import Gateway
from routing.afleveren.schedule import (
    BreakerState,
    CircuitBreaker,
    after_failure,
    backoff_delay,
)
from routing.grote_berichten import REFERENCE_MIME_TYPE, parse_reference
from tests.support import (
    BELASTINGDIENST,
    SAMPLES,
    Env,
    aanlevering,
    free_port,
    set_aflever,
    wait_for,
)

COMPONENTS = ("intake", "sweeper", "validator", "router", "deliverer")
BD = BELASTINGDIENST


async def make_push_recipient(
    env: Env, oin: str, port: int, *, retry_for_hours: float | None = None
) -> None:
    await set_aflever(
        env,
        oin,
        "wus",
        f"https://localhost:{port}/afleverservice",
        retry_for_hours=retry_for_hours,
    )


def aflever_server(env: Env, oin: str, out: Path) -> AfleverServer:
    pki = env.dir / "pki"
    return AfleverServer(
        pki / f"{oin}.crt", pki / f"{oin}.key", pki / "ca.crt", out, pki / "chain.pem"
    )


def fast_retries(env: Env, *, breaker_failures: int = 1000, reset: float = 60.0) -> None:
    a = env.settings.aflever
    a.base_delay_seconds = 0.2
    a.max_delay_seconds = 0.5
    a.timeout_seconds = 5.0
    a.breaker_failures = breaker_failures
    a.breaker_reset_seconds = reset


async def submit(gw: Gateway, n: int) -> list[UUID]:
    assert gw.intake is not None
    return [(await gw.intake.aanleveren(aanlevering("Omzetbelasting"))).kenmerk for _ in range(n)]


async def codes(env: Env, kenmerk: UUID, oin: str = BD) -> list[str]:
    return [s.code for s in await env.history(kenmerk) if s.recipient_oin == oin]


async def delivery(env: Env, kenmerk: UUID, oin: str = BD) -> dict[str, object]:
    row = await (await env.conn()).fetchrow(
        "SELECT * FROM deliveries WHERE kenmerk = $1 AND recipient_oin = $2", kenmerk, oin
    )
    assert row is not None
    return dict(row)


def breaker_gauge(oin: str) -> float:
    return REGISTRY.get_sample_value("digipoort_circuit_breaker_open", {"endpoint": oin}) or 0.0


# ---------------------------------------------------------------------- pure policy


def test_backoff_full_jitter_and_cap() -> None:
    rng = random.Random(1)
    for attempt in range(1, 30):
        d = backoff_delay(attempt, base=1.0, cap=60.0, rng=rng)
        assert 0.0 <= d <= min(60.0, 2 ** (attempt - 1))
    with pytest.raises(ValueError):
        backoff_delay(0, base=1.0, cap=1.0)


def test_schedule_ends_at_window() -> None:
    created = datetime(2026, 1, 1, tzinfo=UTC)
    window = timedelta(hours=1)
    d = after_failure(
        now=created + timedelta(minutes=59, seconds=59),
        created_at=created,
        attempts=20,
        retry_for=window,
        base=5,
        cap=900,
    )
    assert d.retry_at is not None and d.retry_at <= created + window
    gave_up = after_failure(
        now=created + window, created_at=created, attempts=21, retry_for=window, base=5, cap=900
    )
    assert gave_up.give_up


def test_circuit_breaker_states() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    b = CircuitBreaker(failures=2, reset=10)
    b.failure(t0)
    assert b.state(t0) == BreakerState.CLOSED
    b.failure(t0)
    assert b.state(t0 + timedelta(seconds=9)) == BreakerState.OPEN
    assert b.state(t0 + timedelta(seconds=10)) == BreakerState.HALF_OPEN
    b.begin_trial()
    assert b.state(t0 + timedelta(seconds=10)) == BreakerState.OPEN
    b.failure(t0 + timedelta(seconds=10))  # the trial failed: open again for `reset`
    assert b.state(t0 + timedelta(seconds=19)) == BreakerState.OPEN
    assert b.state(t0 + timedelta(seconds=20)) == BreakerState.HALF_OPEN
    b.begin_trial()
    b.success()
    assert b.state(t0 + timedelta(seconds=20)) == BreakerState.CLOSED


# ---------------------------------------------------------------------- end to end


async def test_recipient_down_then_back_delivers_each_exactly_once(
    env: Env, tmp_path: Path
) -> None:
    port = free_port()
    await make_push_recipient(env, BD, port)
    fast_retries(env)
    gw = await env.start_gateway(components=COMPONENTS)
    kenmerken = await submit(gw, 3)

    async def retried() -> bool:
        counts = [(await codes(env, k)).count("420") for k in kenmerken]
        return all(n >= 2 for n in counts)

    await wait_for(retried, timeout=30, what="two failed attempts per envelope")
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:
        for k in kenmerken:
            await env.wait_status(k, "400", recipient=BD, timeout=30)
    finally:
        await server.stop()
    sample = (SAMPLES / "omzetbelasting.xml").read_bytes()
    for k in kenmerken:
        c = await codes(env, k)
        assert c[0] == "405" and c[-1] == "400" and c.count("400") == 1
        assert set(c[1:-1]) == {"420"} and len(c) >= 4, c
        assert server.received.count(str(k)) == 1
        assert (tmp_path / "in" / str(k) / "0-bericht.xml").read_bytes() == sample
        row = await delivery(env, k)
        assert row["state"] == "delivered" and row["attempts"] == c.count("420") + 1
        failed = [s for s in await env.history(k) if s.code == "420"]
        assert all(s.foutcode == "AFS400" and s.details and "poging" in s.details for s in failed)
    assert (
        REGISTRY.get_sample_value("digipoort_delivery_retries_total", {"recipient": BD}) or 0
    ) >= 6


async def test_retry_schedule_survives_gateway_restart(env: Env, tmp_path: Path) -> None:
    port = free_port()
    await make_push_recipient(env, BD, port)
    fast_retries(env)
    env.settings.aflever.base_delay_seconds = 3.0
    env.settings.aflever.max_delay_seconds = 3.0
    gw = await env.start_gateway(components=COMPONENTS)
    (kenmerk,) = await submit(gw, 1)
    await env.wait_status(kenmerk, "420", recipient=BD, timeout=30)
    await env.stop()  # the gateway goes away between attempts
    row = await delivery(env, kenmerk)
    stored = row["next_attempt_at"]
    assert isinstance(stored, datetime) and row["attempts"] == 1 and row["state"] == "pending"
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:
        await env.start_gateway(components=COMPONENTS)
        history = await env.wait_status(kenmerk, "400", recipient=BD, timeout=30)
    finally:
        await server.stop()
    delivered = next(s for s in history if s.code == "400")
    assert delivered.tijdstempel >= stored  # not before the stored time
    assert (await delivery(env, kenmerk))["attempts"] == 2
    assert server.received == [str(kenmerk)]


async def test_recipient_that_never_returns_ends_in_410(env: Env) -> None:
    port = free_port()  # nobody listens here
    await make_push_recipient(env, BD, port, retry_for_hours=0.0005)  # 1.8 s
    fast_retries(env)
    gw = await env.start_gateway(components=COMPONENTS)
    (kenmerk,) = await submit(gw, 1)
    history = await env.wait_status(kenmerk, "410", recipient=BD, timeout=30)
    final = next(s for s in history if s.code == "410")
    assert final.foutcode == "AFS600" and final.details and "pogingen" in final.details
    c = await codes(env, kenmerk)
    assert c[0] == "405" and c[-1] == "410" and "400" not in c and c.count("420") >= 1
    row = await delivery(env, kenmerk)
    assert row["state"] == "failed" and row["last_error"]
    attempts = row["attempts"]
    await asyncio.sleep(1.0)  # a failed delivery is never attempted again
    assert (await delivery(env, kenmerk))["attempts"] == attempts


async def test_circuit_breaker_opens_and_stops_attempts(env: Env, tmp_path: Path) -> None:
    port = free_port()
    await make_push_recipient(env, BD, port)
    fast_retries(env, breaker_failures=2, reset=10.0)  # long enough to observe on a loaded machine
    gw = await env.start_gateway(components=COMPONENTS)
    kenmerken = await submit(gw, 4)

    async def opened() -> bool:
        return breaker_gauge(BD) == 1.0

    await wait_for(opened, timeout=30, what="circuit breaker open")

    async def total_attempts() -> int:
        return int(
            await (await env.conn()).fetchval(
                "SELECT sum(attempts) FROM deliveries WHERE recipient_oin = $1", BD
            )
        )

    before = await total_attempts()
    assert before == 2
    await asyncio.sleep(1.5)  # while open (10 s), nothing is attempted
    assert await total_attempts() == before
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:  # half-open after the reset: a trial succeeds, the breaker closes, all arrive
        for k in kenmerken:
            await env.wait_status(k, "400", recipient=BD, timeout=30)
    finally:
        await server.stop()
    assert breaker_gauge(BD) == 0.0
    assert sorted(server.received) == sorted(str(k) for k in kenmerken)


async def test_large_document_pushed_as_grote_berichten_reference(env: Env, tmp_path: Path) -> None:
    port = free_port()
    await make_push_recipient(env, BD, port)
    fast_retries(env)
    env.settings.grote_berichten.threshold_bytes = 64
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:
        gw = await env.start_gateway(components=COMPONENTS)
        (kenmerk,) = await submit(gw, 1)
        await env.wait_status(kenmerk, "400", recipient=BD, timeout=30)
    finally:
        await server.stop()
    request = (tmp_path / "in" / str(kenmerk) / "afleverRequest.xml").read_bytes()
    assert REFERENCE_MIME_TYPE.encode() in request
    ref = parse_reference((tmp_path / "in" / str(kenmerk) / "0-bericht.xml").read_bytes())
    assert ref.url.endswith(f"/grote-berichten/{kenmerk}/0")
    assert ref.size == len((SAMPLES / "omzetbelasting.xml").read_bytes())


async def test_two_deliverers_never_push_one_delivery_twice(env: Env, tmp_path: Path) -> None:
    port = free_port()
    await make_push_recipient(env, BD, port)
    fast_retries(env)
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    try:
        gw = await env.start_gateway(components=(*COMPONENTS[:-1], "deliverer"))
        await env.start_gateway(components=("deliverer",), serve_http=False)  # a 2nd deliverer
        kenmerken = await submit(gw, 12)
        for k in kenmerken:
            await env.wait_status(k, "400", recipient=BD, timeout=30)
    finally:
        await server.stop()
    assert sorted(server.received) == sorted(str(k) for k in kenmerken)
    attempts = await (await env.conn()).fetch(
        "SELECT attempts FROM deliveries WHERE recipient_oin = $1", BD
    )
    assert [r["attempts"] for r in attempts] == [1] * 12


async def test_client_and_reference_server_dedupe_and_signer_check(
    env: Env, tmp_path: Path
) -> None:
    from adapters.wus.component import participant_verifier
    from routing.afleveren.deliverer import DeliveryFailed
    from routing.afleveren.wus import AfleverClient
    from tests.support import CBS

    pki = env.dir / "pki"
    client = AfleverClient(
        pki / "server.crt", pki / "server.key", pki / "ca.crt", participant_verifier(env.settings)
    )
    port = free_port()
    server = aflever_server(env, BD, tmp_path / "in")
    await server.start("127.0.0.1", port)
    kenmerk = UUID(int=42)
    body = (
        '<afleverRequest xmlns="http://logius.nl/digipoort/koppelvlakservices/1.2/">'
        f"<kenmerk>{kenmerk}</kenmerk><berichtsoort>Omzetbelasting</berichtsoort>"
        "<berichtkenmerk>b</berichtkenmerk><tijdstempelAangeleverd>2026-01-01T00:00:00Z"
        "</tijdstempelAangeleverd><identiteitBelanghebbende><nummer>1</nummer><type>OIN</type>"
        "</identiteitBelanghebbende><rolBelanghebbende>Bedrijf</rolBelanghebbende>"
        "<berichtInhoud><mimeType>text/xml</mimeType><bestandsnaam>a.xml</bestandsnaam>"
        "<inhoud>PGEvPg==</inhoud></berichtInhoud></afleverRequest>"
    ).encode()
    url = f"https://localhost:{port}/afleverservice"
    try:
        await client.afleveren(url, BD, kenmerk, body)
        (tmp_path / "in" / str(kenmerk) / "0-a.xml").write_bytes(b"changed by the recipient")
        await client.afleveren(url, BD, kenmerk, body)  # a repeat: OK, not written again
        assert (
            tmp_path / "in" / str(kenmerk) / "0-a.xml"
        ).read_bytes() == b"changed by the recipient"
        assert server.received == [str(kenmerk)] * 2
        with pytest.raises(DeliveryFailed, match="andere partij"):
            await client.afleveren(url, CBS, kenmerk, body)  # answered by BD, not by CBS
    finally:
        await server.stop()
        await client.close()
