"""The test clients of the CLI against a real gateway (WUS, FTPS, SMTP over real TLS with
the test PKI, RabbitMQ for subscribe): refused certificates say why, a fault prints its
code once, ``status`` has one schema whatever the source, stdout carries only the
result."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from tests.cli_support import cli, json_error, one_error_line
from tests.support import ALFA, AMQP, SAMPLES, Env, aanlevering

CBS = "00000099200000020000"
HBAG = "00000099200000030000"
BELASTINGDIENST = "00000099200000010000"
COMPONENTS = ("intake", "validator", "router", "wus", "ftp", "smtp")
FLOWS = {"wus": "Omzetbelasting", "ftp": "CBS-Detailhandel", "smtp": "Douane-Uitvoer"}
SAMPLE = {"wus": "omzetbelasting.xml", "ftp": "cbs-detailhandel.xml", "smtp": "omzetbelasting.xml"}
STATUS_KEYS = {
    "kenmerk",
    "code",
    "omschrijving",
    "tijdstempel",
    "ontvanger",
    "foutcode",
    "foutbeschrijving",
    "details",
}


def identity(pki: Path, stem: str) -> list[str]:
    return ["--cert", str(pki / f"{stem}.crt"), "--key", str(pki / f"{stem}.key")]


async def submit(env: Env, via: str, who: list[str], *extra: str) -> object:
    return await cli(
        "submit", "--config", str(env.config_path), "--via", via, *who,
        "--berichtsoort", FLOWS[via], *extra, str(SAMPLES / SAMPLE[via]),
    )  # fmt: skip


@pytest.mark.parametrize("via", ["wus", "ftp", "smtp"])
async def test_refused_certificates_say_why(env: Env, via: str, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    pki = env.pki
    expected = {  # the gateway's reason (SMTP 535) or what the client sees itself
        "revoked": ("revoked",),
        "expired": ("expired",),
        "untrusted": ("which ca.crt does not trust", "untrusted"),
    }
    for stem, why in expected.items():
        line = one_error_line(await submit(env, via, identity(pki, stem)), exit_code=2)
        assert f"refused the certificate {stem}.crt" in line, line
        assert any(w in line for w in why), line
    # a revoked certificate away from the CRL: the client can only say what it saw
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("revoked.crt", "revoked.key", "ca.crt", "chain.pem"):
        if (pki / name).exists():
            shutil.copy(pki / name, alone / name)
    line = one_error_line(await submit(env, via, identity(alone, "revoked")), exit_code=2)
    assert "refused the certificate revoked.crt" in line, line
    # and a good one still works: only the kenmerk on stdout, no blank line before it
    good = await submit(env, via, identity(pki, ALFA))
    assert good.exit_code == 0, good.output
    assert good.stdout == f"{uuid.UUID(good.stdout.strip())}\n"


async def test_wus_fault_prints_its_code_once(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)
    result = await cli(
        "submit", "--config", str(env.config_path), *identity(env.pki, ALFA),
        "--berichtsoort", "Onbekend", str(SAMPLES / "omzetbelasting.xml"),
    )  # fmt: skip
    line = one_error_line(result, exit_code=2)
    assert line.startswith("error: ALS140: De berichtsoort is onbekend.")
    assert line.count("ALS140") == 1
    result = await cli(
        "submit", "--config", str(env.config_path), *identity(env.pki, ALFA), "--json",
        "--berichtsoort", "Onbekend", str(SAMPLES / "omzetbelasting.xml"),
    )  # fmt: skip
    assert json_error(result, exit_code=2)["code"] == "ALS140"


async def test_gateway_unreachable_is_one_line(env: Env) -> None:
    for via in ("wus", "ftp", "smtp"):  # nothing is listening: no gateway started
        line = one_error_line(await submit(env, via, identity(env.pki, ALFA)))
        assert "cannot reach the gateway" in line, line


async def test_status_has_one_schema_from_database_wus_and_ftp(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)
    cfg = ["--config", str(env.config_path)]
    result = await submit(env, "ftp", identity(env.pki, ALFA), "--json")
    assert result.exit_code == 0, result.output
    kenmerk = json.loads(result.stdout)["kenmerk"]
    for oin in (CBS, HBAG):
        await env.wait_status(uuid.UUID(kenmerk), "400", recipient=oin)

    async def history(*via: str) -> list[dict[str, object]]:
        done = await cli("status", kenmerk, *cfg, *via, "--json")
        assert done.exit_code == 0, done.output
        entries = json.loads(done.stdout)
        assert all(set(e) == STATUS_KEYS for e in entries), entries
        return list(entries)

    from_db = await history()
    from_wus = await history("--via", "wus", *identity(env.pki, ALFA))
    from_ftp = await history("--via", "ftp", *identity(env.pki, ALFA))

    def outline(entries: list[dict[str, object]]) -> list[tuple[object, ...]]:
        return sorted((e["code"], e["ontvanger"], e["foutcode"], e["kenmerk"]) for e in entries)

    assert outline(from_db) == outline(from_wus) == outline(from_ftp)
    assert ("400", CBS, None, kenmerk) in outline(from_ftp)
    human = await cli("status", kenmerk, *cfg, "--via", "ftp", *identity(env.pki, ALFA))
    assert f"400  Afleveren uitvragende partij gelukt [{HBAG}]" in human.stdout
    # SMTP senders read statuses as return mails: no --via smtp
    assert (await cli("status", kenmerk, *cfg, "--via", "smtp")).exit_code == 2
    unknown = str(uuid.uuid4())
    line = one_error_line(
        await cli("status", unknown, *cfg, "--via", "ftp", *identity(env.pki, ALFA))
    )
    assert unknown in line


async def test_subscribe_refused_by_the_broker(env: Env, tmp_path: Path) -> None:
    out = tmp_path / "recipients"
    result = await cli(
        "recipients", "provision", "--config", str(env.config_path), "--out", str(out), "--json"
    )
    assert result.exit_code == 0, result.output
    provisioned = {p["oin"]: p for p in json.loads(result.stdout)}
    assert BELASTINGDIENST in provisioned
    url = (out / f"{BELASTINGDIENST}.txt").read_text().strip()
    wrong = url.replace("@127.0.0.1", "x@127.0.0.1", 1)
    line = one_error_line(
        await cli("subscribe", "--oin", BELASTINGDIENST, "--amqp-url", wrong, "--out",
                  str(tmp_path / "inbox"), "--count", "1")
    )  # fmt: skip
    assert "ACCESS_REFUSED" in line and "--amqp-url" in line
    assert url.split("@")[0].rsplit(":", 1)[-1] not in line  # no password in the message
    line = one_error_line(
        await cli("subscribe", "--oin", CBS, "--amqp-url", url, "--out",
                  str(tmp_path / "inbox"), "--count", "1")
    )  # fmt: skip
    assert f"queue of {CBS}" in line and "ACCESS_REFUSED" in line
    guest = f"{AMQP.replace(':guest@', ':nope@')}/{env.name}"
    error = json_error(
        await cli("subscribe", "--oin", CBS, "--amqp-url", guest, "--out",
                  str(tmp_path / "inbox"), "--count", "1", "--json")
    )  # fmt: skip
    assert error["code"] == "broker-auth"


async def test_subscribe_events_as_json_lines(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    out = tmp_path / "recipients"
    result = await cli(
        "recipients", "provision", "--config", str(env.config_path), "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    sent = await submit(env, "wus", identity(env.pki, ALFA))
    kenmerk = sent.stdout.strip()
    url = (out / f"{BELASTINGDIENST}.txt").read_text().strip()
    got = await asyncio.wait_for(
        cli("subscribe", "--oin", BELASTINGDIENST, "--amqp-url", url, "--out",
            str(tmp_path / "inbox"), "--count", "1", "--json"),
        timeout=60,
    )  # fmt: skip
    assert got.exit_code == 0, got.output
    event = json.loads(got.stdout)
    assert event["kenmerk"] == kenmerk and event["result"] == "stored"
    assert (tmp_path / "inbox" / kenmerk).is_dir()


def _run_with_terminal_stderr(args: list[str]) -> tuple[int, str, str]:
    """Run ``digipoort ARGS`` with stderr on a pseudo-terminal (so progress is drawn)
    and stdout on a pipe: (exit code, stdout, what the terminal showed)."""
    import pty
    import subprocess
    import sys

    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "digipoort.cli", *args],
            stdout=subprocess.PIPE,
            stderr=slave,
            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"},
        )
        os.close(slave)
        shown = bytearray()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(master)
    return proc.returncode, out.decode(), shown.decode(errors="replace")


@pytest.mark.parametrize("via", ["wus", "ftp"])
async def test_large_submit_shows_progress_on_the_terminal_only(
    env: Env, via: str, tmp_path: Path
) -> None:
    await env.start_gateway(components=COMPONENTS)
    if via == "ftp":
        berichtsoort, big = "DNB-DGS", tmp_path / "dgs.bin"
        big.write_bytes(os.urandom(3 * 1024 * 1024))
    else:
        berichtsoort, big = "Omzetbelasting", tmp_path / "groot.xml"
        sample = (SAMPLES / "omzetbelasting.xml").read_bytes()
        big.write_bytes(sample.replace(b"?>", b"?>\n<!--" + b"x" * 3 * 1024 * 1024 + b"-->", 1))
    code, out, shown = await asyncio.to_thread(
        _run_with_terminal_stderr,
        ["submit", "--config", str(env.config_path), "--via", via,
         *identity(env.pki, ALFA), "--berichtsoort", berichtsoort, str(big)],
    )  # fmt: skip
    assert code == 0, shown
    assert out == f"{uuid.UUID(out.strip())}\n"  # the kenmerk alone on stdout
    assert big.name in shown and "MB" in shown, shown  # the bar, drawn on stderr


async def test_subscribe_shows_grote_berichten_download_progress(env: Env, tmp_path: Path) -> None:
    """A document delivered by reference is fetched with a progress bar on a terminal
    stderr; stdout keeps one line per message."""
    gw = await env.start_gateway(components=("intake", "validator", "router", "wus"))
    assert gw.intake is not None
    out = tmp_path / "recipients"
    provisioned = await cli(
        "recipients", "provision", "--config", str(env.config_path), "--out", str(out)
    )
    assert provisioned.exit_code == 0, provisioned.output
    line = b"<regel>" + b"x" * 90 + b"</regel>\n"
    large = b"<omzet>" + line * (6 * 1024 * 1024 // len(line)) + b"</omzet>"
    accepted = await gw.intake.aanleveren(aanlevering("Omzetbelasting", content=large))
    await env.wait_status(accepted.kenmerk, "400", recipient=BELASTINGDIENST)
    inbox = tmp_path / "inbox"
    code, stdout, shown = await asyncio.to_thread(
        _run_with_terminal_stderr,
        ["subscribe", "--oin", BELASTINGDIENST,
         "--amqp-url", (out / f"{BELASTINGDIENST}.txt").read_text().strip(),
         "--out", str(inbox), "--count", "1", *identity(env.pki, BELASTINGDIENST),
         "--ca", str(env.pki / "ca.crt")],
    )  # fmt: skip
    assert code == 0, shown
    assert stdout.startswith(f"1/1 stored {accepted.kenmerk} Omzetbelasting"), stdout
    assert stdout.count("\n") == 1
    assert "MB" in shown, shown  # the download bar, on stderr
    stored = next((inbox / str(accepted.kenmerk)).glob("*.xml"))
    assert stored.read_bytes() == large
