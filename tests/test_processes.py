"""``serve --processes 2``: both processes take work; SIGTERM drains both, nothing lost.
FTP runs in exactly one of the processes (it never shares its port); a listener in the FTP
passive range makes ``serve`` refuse at start."""

from __future__ import annotations

import asyncio
import ftplib
import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import aiohttp

from digipoort.devenv import ALFA, CBS
from digipoort.pki import client_ssl_context
from digipoort.prerequisites import _listeners
from digipoort.provision import Management
from digipoort.supervisor import worker_components
from tests.cli_support import cli, one_error_line
from tests.support import BELASTINGDIENST, MGMT, SAMPLES, Env, aanlevering, free_port, wait_for


async def test_two_processes_share_work_and_drain_on_sigterm(env: Env) -> None:
    http_port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "digipoort.cli",
            "serve",
            "--config",
            str(env.config_path),
            "--components",
            "validator,router",
            "--processes",
            "2",
        ],
        env={
            **os.environ,
            "DIGIPOORT_HTTP__PORT": str(http_port),
            "DIGIPOORT_LOG_LEVEL": "warning",
        },
        stdout=subprocess.DEVNULL,
    )
    try:
        mgmt = Management(MGMT)

        async def two_consumers() -> bool:
            try:
                q = await mgmt.request(
                    "GET", f"/queues/{quote(env.name, safe='')}/digipoort.validate"
                )
            except RuntimeError:  # not declared yet
                return False
            return isinstance(q, dict) and q.get("consumers") == 2

        await wait_for(two_consumers, timeout=30, what="a validate consumer in each process")
        gw = await env.start_gateway(components=("intake",), serve_http=False)
        assert gw.intake is not None
        accepted = await asyncio.gather(
            *(gw.intake.aanleveren(aanlevering("Omzetbelasting")) for _ in range(300))
        )

        async def metrics_of_both() -> bool:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{http_port}/metrics") as r,
            ):
                text = await r.text()
            # multi-process metrics: a scrape reports the work of every process
            lines = [
                ln
                for ln in text.splitlines()
                if ln.startswith('digipoort_stage_messages_total{outcome="ok",stage="validate"}')
            ]
            return bool(lines) and float(lines[0].split()[-1]) >= 1

        await wait_for(metrics_of_both, timeout=30, what="metrics from the workers")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 60)
    assert rc == 0
    # whatever was in flight was finished or returned to the queue: restart and complete
    await env.start_gateway(components=("validator", "router"), serve_http=False)
    conn = await env.conn()

    async def all_delivered() -> bool:
        n = await conn.fetchval(
            "SELECT count(*) FROM statuses WHERE code = '400' AND recipient_oin = $1",
            BELASTINGDIENST,
        )
        return n == len(accepted)

    await wait_for(all_delivered, timeout=60, what="all 300 delivered exactly once")
    dupes = await conn.fetchval("SELECT count(*) - count(DISTINCT kenmerk) FROM deliveries")
    assert dupes == 0


# -- FTP under --processes ------------------------------------------------------------------
def test_ftp_runs_in_worker_zero_only() -> None:
    names = ("intake", "wus", "ftp", "validator")
    assert worker_components(names, 0) == names
    assert worker_components(names, 1) == ("intake", "wus", "validator")
    assert worker_components(names, 3) == ("intake", "wus", "validator")


def _children(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
        return {int(p) for p in fh.read().split()}


def _ftp_upload(env: Env, src: Path) -> str:
    """One FTPS upload with ftplib (explicit TLS, passive mode); the server's reply."""
    ctx = client_ssl_context(env.pki / f"{ALFA}.crt", env.pki / f"{ALFA}.key", env.pki / "ca.crt")
    ftp = ftplib.FTP_TLS(context=ctx, timeout=30)  # noqa: S321  (FTPS: the real client)
    ftp.connect("127.0.0.1", env.settings.ftp.port)
    ftp.auth()
    ftp.login(ALFA, "")
    ftp.prot_p()
    with open(src, "rb") as fh:
        reply = ftp.storbinary(f"STOR /in/CBS-Detailhandel/{src.name}", fh)
    ftp.quit()
    return reply


async def test_ftp_in_one_of_two_processes_no_restart_loop(env: Env, tmp_path: Path) -> None:
    """Two processes with FTP among the components: one FTP listener, two HTTP listeners
    (SO_REUSEPORT), no worker dies (before: the second bound the FTP port, got
    EADDRINUSE and was restarted every second), and an FTPS upload is delivered."""
    http_port = free_port()
    errors = tmp_path / "stderr.log"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable, "-m", "digipoort.cli", "serve",
                "--config", str(env.config_path),
                "--components", "intake,validator,router,ftp",
                "--processes", "2",
            ],
            env={**os.environ, "DIGIPOORT_HTTP__PORT": str(http_port),
                 "DIGIPOORT_LOG_LEVEL": "warning"},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )  # fmt: skip
    try:
        mgmt = Management(MGMT)

        async def two_consumers() -> bool:
            try:
                q = await mgmt.request(
                    "GET", f"/queues/{quote(env.name, safe='')}/digipoort.validate"
                )
            except RuntimeError:
                return False
            return isinstance(q, dict) and q.get("consumers") == 2

        await wait_for(two_consumers, timeout=60, what="a validate consumer in each process")

        def listening_on(port: int) -> int:
            return sum(1 for _, p in _listeners() or [] if p == port)

        async def ftp_listening() -> bool:
            return listening_on(env.settings.ftp.port) == 1

        await wait_for(ftp_listening, timeout=30, what="the FTP listener")
        assert listening_on(http_port) == 2  # the metrics port is shared by both
        workers = _children(proc.pid)
        assert len(workers) == 2

        src = tmp_path / f"detailhandel-{uuid.uuid4().hex[:8]}.xml"
        src.write_bytes((SAMPLES / "cbs-detailhandel.xml").read_bytes())
        reply = await asyncio.to_thread(_ftp_upload, env, src)
        kenmerk = uuid.UUID(reply.split("kenmerk ")[1].split(";")[0])
        await env.wait_status(kenmerk, "400", recipient=CBS)
        assert _children(proc.pid) == workers, "a worker process was restarted"
        assert listening_on(env.settings.ftp.port) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.to_thread(proc.wait, 60)
    log = errors.read_text(errors="replace")
    assert "worker process died" not in log, log[-2000:]
    assert "Address already in use" not in log, log[-2000:]
    assert rc == 0, log[-2000:]


async def test_ftp_alone_with_processes_is_refused(env: Env) -> None:
    result = await cli(
        "serve", "--config", str(env.config_path), "--components", "ftp", "--processes", "2"
    )
    line = one_error_line(result, exit_code=2)
    assert "--processes 2 with only ftp" in line


async def test_listener_in_the_ftp_passive_range_refuses_serve(env: Env) -> None:
    port = env.settings.ftp.passive_port_min + 3
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = await cli("serve", "--config", str(env.config_path), "--components", "ftp")
    line = one_error_line(result)
    assert f"port {port} (setting ftp.passive_port_min/passive_port_max;" in line
    assert "DIGIPOORT_FTP__PASSIVE_PORT_MIN" in line and "already in use" in line
