"""Which event loop a process runs on (issue 15 item 6; digipoort/app.py event_loop_for).

uvloop for processes without a TLS listener, asyncio's loop wherever a refused handshake
must still send its TLS alert and be logged and counted (digipoort/pki/tls.py patches
asyncio's SSL protocol; uvloop's own one drops the alert — the last test shows it)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from digipoort.app import Gateway, event_loop_for, run_on, uvloop_available
from digipoort.pki import server_ssl_context
from digipoort.pki.tls import label_context
from tests.support import Env, aanlevering

needs_uvloop = pytest.mark.skipif(not uvloop_available(), reason="uvloop not installed")
TLS_LISTENERS = ("wus", "smtp", "pop3", "ftp", "portal")


@needs_uvloop
def test_auto_picks_uvloop_only_without_a_tls_listener() -> None:
    assert event_loop_for("auto", ["validator", "router"]) == "uvloop"
    assert event_loop_for("auto", ["intake", "sweeper", "opsmetrics"]) == "uvloop"
    for listener in TLS_LISTENERS:
        assert event_loop_for("auto", ["intake", "sweeper", listener]) == "asyncio", listener
    assert event_loop_for("auto", ["something-new"]) == "asyncio"  # unknown: the safe one
    assert event_loop_for("asyncio", ["validator"]) == "asyncio"
    assert event_loop_for("uvloop", ["wus"]) == "uvloop"  # forced (the operator's choice)


@needs_uvloop
async def test_intake_and_sweeper_work_on_uvloop(env: Env) -> None:
    """A gateway process on uvloop: asyncpg, aio-pika and the group commit run on it."""
    submission = aanlevering()

    async def main() -> tuple[str, str]:
        loop_kind = type(asyncio.get_running_loop()).__module__
        gateway = Gateway(env.settings, components=("intake", "sweeper"))
        await gateway.start(serve_http=False)
        try:
            assert gateway.intake is not None
            accepted = await gateway.intake.aanleveren(submission)
        finally:
            await gateway.stop()
        return loop_kind, str(accepted.kenmerk)

    loop_kind, kenmerk = await asyncio.to_thread(run_on, "uvloop", main)
    assert loop_kind.startswith("uvloop")
    conn = await env.conn()
    codes = [
        r["code"]
        for r in await conn.fetch(
            "SELECT code FROM statuses WHERE kenmerk = $1::uuid ORDER BY id", kenmerk
        )
    ]
    assert codes == ["105", "100", "110"]


def _refused_handshake(loop: str, pki: Path) -> str:
    """What a client without a certificate sees from a TLS server on ``loop``."""
    context = server_ssl_context(
        pki / "server.crt", pki / "server.key", pki / "ca.crt", pki / "ca.crl"
    )
    label_context(context, "loop-probe")

    async def main() -> str:
        async def handle(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(b"hello")
            await w.drain()
            w.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        port = server.sockets[0].getsockname()[1]

        def probe() -> str:
            client = ssl.create_default_context(cafile=str(pki / "ca.crt"))
            client.check_hostname = False
            try:
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                    client.wrap_socket(raw) as tls,
                ):
                    tls.recv(10)
                    return "no alert"
            except ssl.SSLError as exc:
                return str(exc.reason)
            except OSError as exc:
                return f"no alert: {exc!r}"

        try:
            return await asyncio.to_thread(probe)
        finally:
            server.close()

    return run_on(loop, main)


@needs_uvloop
async def test_only_asyncios_loop_sends_the_handshake_alert(env: Env) -> None:
    assert await asyncio.to_thread(_refused_handshake, "asyncio", env.pki) == (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    )
    # the reason TLS listeners stay on asyncio's loop (if uvloop ever sends it, revisit)
    assert await asyncio.to_thread(_refused_handshake, "uvloop", env.pki) != (
        "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    )
