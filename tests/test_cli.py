"""The command line: dev init, setup, registry load, serve (health, SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp
from click.testing import CliRunner

from digipoort import db, provision, registry_store
from digipoort.cli import main
from digipoort.config import load_settings
from digipoort.pki.trust import CertificateVerifier
from tests.cli_support import http_ready
from tests.support import ALFA, AMQP, MGMT, PG_ADMIN, Env, free_port, wait_for

SAMPLE_OINS = [
    "00000099100000010000",
    "00000099100000020000",
    "00000099200000010000",
    "00000099200000020000",
    "00000099200000030000",
    "00000099200000040000",
    "00000099200000050000",
    "00000099200000060000",
]


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_dev_init_writes_environment_and_keeps_keys(tmp_path: Path) -> None:
    d = tmp_path / "dev"
    invoke("dev", "init", "--dir", str(d))
    assert (d / "digipoort.toml").is_file()
    for name in ("ca.crt", "ca.crl", "server.crt", "server.key", "revoked.crt", "revoked.key"):
        assert (d / "pki" / name).is_file(), name
    for oin in SAMPLE_OINS:
        assert (d / "pki" / f"{oin}.crt").is_file() and (d / "pki" / f"{oin}.key").is_file()
    settings = load_settings(d / "digipoort.toml")
    assert len(settings.registry.participants) == 8
    assert {b.name for b in settings.registry.berichtsoorten} == {
        "Omzetbelasting",
        "CBS-Detailhandel",
        "DigiInkoop-Factuur",
        "DigiInkoop-Order",
        "e-Factuur-EN16931",
        "Douane-Uitvoer",
        "DNB-DGS",
    }
    key = (d / "pki" / f"{ALFA}.key").read_bytes()
    out = invoke("dev", "init", "--dir", str(d))
    assert "nothing written" in out
    assert (d / "pki" / f"{ALFA}.key").read_bytes() == key
    invoke("dev", "init", "--dir", str(d), "--force")
    assert (d / "pki" / f"{ALFA}.key").read_bytes() != key
    verifier = CertificateVerifier.from_files(
        d / "pki" / "ca.crt", [d / "pki" / "ca.crl"], d / "pki" / "chain.pem", require_crl=True
    )
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((d / "pki" / f"{ALFA}.crt").read_bytes())
    assert verifier.verify(cert).oin == ALFA


async def test_registry_load_is_idempotent_and_audited(env: Env) -> None:
    conn = await env.conn()
    audit_before = await conn.fetchval("SELECT count(*) FROM registry_audit")
    assert audit_before > 0  # the env's first load was audited
    assert await registry_store.load_config(conn, env.settings.registry, actor="t") == []
    assert await conn.fetchval("SELECT count(*) FROM registry_audit") == audit_before
    changed = env.settings.registry.model_copy(deep=True)
    changed.berichtsoorten[0].max_size = 1234
    changes = await registry_store.load_config(conn, changed, actor="operator-x")
    assert changes == [f"berichtsoort.update {changed.berichtsoorten[0].name}"]
    row = await conn.fetchrow(
        "SELECT actor, action, detail FROM registry_audit ORDER BY id DESC LIMIT 1"
    )
    assert row["actor"] == "operator-x" and row["detail"]["after"]["max_size"] == 1234


async def test_dev_init_output_serves_unchanged_and_sigterm_exits_0(tmp_path: Path) -> None:
    name = f"dptest_cli_{uuid.uuid4().hex[:8]}"
    d = tmp_path / "dev"
    http_port = free_port()
    env = {**os.environ, "DIGIPOORT_LOG_LEVEL": "warning"}
    base = [sys.executable, "-m", "digipoort.cli"]
    await asyncio.to_thread(
        subprocess.run,
        [
            *base,
            "dev",
            "init",
            "--dir",
            str(d),
            "--database-url",
            f"{PG_ADMIN}/{name}",
            "--broker-url",
            f"{AMQP}/{name}",
            "--management-url",
            MGMT,
            "--http-port",
            str(http_port),
            "--wus-port",
            str(free_port()),
            "--smtp-port",
            str(free_port()),
            "--pop3-port",
            str(free_port()),
            "--ftp-port",
            str(free_port()),
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    cfg = str(d / "digipoort.toml")
    try:
        await asyncio.to_thread(
            subprocess.run,
            [*base, "setup", "--config", cfg],
            check=True,
            env=env,
            capture_output=True,
        )
        proc = subprocess.Popen(
            [*base, "serve", "--config", cfg],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            await wait_for(lambda: http_ready(http_port), timeout=30, what="/readyz")
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{http_port}/metrics") as r:
                    assert "digipoort_ready 1.0" in await r.text()
                async with s.get(f"http://127.0.0.1:{http_port}/healthz") as r:
                    assert r.status == 200
        finally:
            proc.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(proc.wait, 30)
        assert rc == 0, proc.stderr.read().decode() if proc.stderr else ""
    finally:
        await provision.drop_database(f"{PG_ADMIN}/{name}")
        await provision.Management(MGMT).delete_vhost(name)
    _ = db
