"""SMTP, POP3 and FTPS with client software nobody here wrote, each presenting only its
leaf certificate (as most real clients do): swaks submits a Douane-Uitvoer mail and gets
a kenmerk, mpop fetches the return mail over POP3 STLS, lftp and curl upload over FTPS.
A test is skipped only when its tool is not installed (``scripts/bootstrap.sh test``
installs them)."""

from __future__ import annotations

import asyncio
import mailbox
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support import ALFA, DOUANE, SAMPLES, Env, wait_for

DOMAIN = "digipoort.test"
_KENMERK = re.compile(r"kenmerk ([0-9a-f-]{36})")


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")


def leaf_only(env: Env, oin: str, into: Path) -> Path:
    """A file with only the leaf certificate of ``oin`` (the dev PKI's ``<OIN>.crt`` holds
    the leaf followed by the intermediate)."""
    pem = (env.pki / f"{oin}.crt").read_text()
    end = "-----END CERTIFICATE-----"
    leaf = into / f"{oin}-leaf.pem"
    leaf.write_text(pem[: pem.index(end) + len(end)] + "\n")
    assert leaf.read_text().count("BEGIN CERTIFICATE") == 1
    return leaf


async def run(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run, args, capture_output=True, text=True, timeout=timeout
    )


# -- SMTP and POP3 -----------------------------------------------------------------------------
async def test_swaks_submits_and_mpop_fetches_the_return_mail(env: Env, tmp_path: Path) -> None:
    need("swaks")
    need("mpop")
    await env.start_gateway(
        components=("intake", "validator", "router", "smtp", "pop3", "smtpreturns")
    )
    leaf, key, ca = leaf_only(env, ALFA, tmp_path), env.pki / f"{ALFA}.key", env.pki / "ca.crt"
    sent = await run(
        ["swaks", "--server", "127.0.0.1", "--port", str(env.settings.smtp.port),
         "--tls", "--tls-cert", str(leaf), "--tls-key", str(key),
         "--from", f"alfa@{DOMAIN}", "--to", f"douane-uitvoer@{DOMAIN}",
         "--header", f"Subject: [V={ALFA}][A={DOUANE}][K=swaks-1]",
         "--body", "Aanlevering met swaks",
         "--attach-type", "text/xml", "--attach-name", "uitvoer.xml",
         "--attach", f"@{SAMPLES / 'omzetbelasting.xml'}"]
    )  # fmt: skip
    found = _KENMERK.search(sent.stdout)
    assert sent.returncode == 0 and found, sent.stdout[-2000:] + sent.stderr
    kenmerk = uuid.UUID(found.group(1))
    await env.wait_status(kenmerk, "400", recipient=DOUANE)

    box = tmp_path / "mbox"
    box.touch()
    fetch = [
        "mpop", "--host=127.0.0.1", f"--port={env.settings.pop3.port}",
        "--tls=on", "--tls-starttls=on", f"--tls-trust-file={ca}",
        f"--tls-cert-file={leaf}", f"--tls-key-file={key}",
        "--auth=user", f"--user={ALFA}", "--passwordeval=echo any",
        f"--delivery=mbox,{box}", "--keep=on", "--received-header=off", "--quiet",
    ]  # fmt: skip

    async def return_mail() -> list[str] | None:
        done = await run(fetch)
        assert done.returncode == 0, done.stdout + done.stderr
        subjects = [str(m["Subject"]) for m in mailbox.mbox(box)]
        return subjects if any(m for m in subjects) else None

    subjects = await wait_for(return_mail, timeout=30, what="mpop fetching the return mail")
    assert f"[V={env.settings.gateway_oin}][A={ALFA}][K=swaks-1]" in subjects
    assert any(f"X-Digipoort-Kenmerk: {kenmerk}" in m.as_string() for m in mailbox.mbox(box))


# -- FTPS ----------------------------------------------------------------------------------------
async def test_lftp_and_curl_upload_with_a_leaf_only_certificate(env: Env, tmp_path: Path) -> None:
    need("lftp")
    need("curl")
    await env.start_gateway(components=("intake", "validator", "router", "ftp"))
    leaf, key, ca = leaf_only(env, ALFA, tmp_path), env.pki / f"{ALFA}.key", env.pki / "ca.crt"
    src = tmp_path / "detailhandel.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)
    port = env.settings.ftp.port

    script = (
        "set ftp:ssl-force true; set ftp:ssl-protect-data true; set ftp:passive-mode true;"
        f" set ssl:ca-file {ca}; set ssl:cert-file {leaf}; set ssl:key-file {key};"
        " set net:max-retries 1; set net:timeout 20;"
        f" open -u {ALFA},x ftp://127.0.0.1:{port};"
        f" put {src} -o /in/CBS-Detailhandel/lftp-1.xml; cls -1 /out/"
    )
    lftp = await run(["lftp", "-c", script])
    assert lftp.returncode == 0, lftp.stdout + lftp.stderr
    assert re.search(r"lftp-1\.xml\.[0-9a-f-]{36}\.status\.xml", lftp.stdout), lftp.stdout

    curl = await run(
        ["curl", "-sS", "--max-time", "30", "--ssl-reqd", "--cert", str(leaf),
         "--key", str(key), "--cacert", str(ca), "-u", f"{ALFA}:",
         "-T", str(src), f"ftp://127.0.0.1:{port}/in/CBS-Detailhandel/curl-leaf.xml",
         "-w", "%{response_code}"]
    )  # fmt: skip
    assert curl.returncode == 0 and curl.stdout.endswith("226"), curl.stdout + curl.stderr

    conn = await env.conn()

    async def both() -> list[str] | None:
        rows = await conn.fetch(
            "SELECT aanleverkenmerk FROM envelopes WHERE koppelvlak = 'ftp' ORDER BY 1"
        )
        names = [r["aanleverkenmerk"] for r in rows]
        return names if len(names) == 2 else None

    assert await wait_for(both, what="both uploads as envelopes") == ["curl-leaf.xml", "lftp-1.xml"]
