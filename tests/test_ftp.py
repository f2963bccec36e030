# ruff: noqa: S321  (FTPS clients under test: ftplib is the real client here)
"""Koppelvlak FTP end to end: real clients (ftplib FTP_TLS, curl) over real TLS."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapters.ftp.client import FtpsClient, FtpUploadError
from digipoort.devenv import ALFA, BETA, CBS, HBAG
from digipoort.pki import client_ssl_context
from tests.support import SAMPLES, Env, wait_for

COMPONENTS = ("intake", "validator", "router", "ftp")
MiB = 1024 * 1024


def ftps(env: Env, oin: str = ALFA, *, cert: str | None = None) -> ftplib.FTP_TLS:
    """A connected FTP_TLS, AUTH TLS done (not logged in)."""
    name = cert or oin
    ctx = client_ssl_context(env.pki / f"{name}.crt", env.pki / f"{name}.key", env.pki / "ca.crt")
    ftp = ftplib.FTP_TLS(context=ctx, timeout=30)
    ftp.connect("127.0.0.1", env.settings.ftp.port)
    ftp.auth()
    return ftp


def login(env: Env, oin: str = ALFA) -> ftplib.FTP_TLS:
    ftp = ftps(env, oin)
    ftp.login(oin, "")
    ftp.prot_p()
    return ftp


def make_file(path: Path, size: int, seed: int = 1) -> str:
    """A pseudo-random file of ``size`` bytes; returns its SHA-256."""
    h = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MiB // 32)
    with open(path, "wb") as fh:
        left = size
        i = 0
        while left:
            chunk = block[: min(left, MiB)]
            chunk = i.to_bytes(8, "big") + chunk[8:] if len(chunk) > 8 else chunk
            fh.write(chunk)
            h.update(chunk)
            left -= len(chunk)
            i += 1
    return h.hexdigest()


def kenmerk_of(reply: str) -> uuid.UUID:
    return uuid.UUID(reply.split("kenmerk ")[1].split(";")[0])


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def document_row(env: Env, kenmerk: uuid.UUID) -> Any:
    return await (await env.conn()).fetchrow(
        "SELECT size, sha256, mime_type, bestandsnaam FROM documents WHERE kenmerk = $1", kenmerk
    )


# ---------------------------------------------------------------------------- happy flows
async def test_small_cbs_upload_delivered_and_status_file(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "detailhandel-1.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)

    def upload() -> str:
        ftp = login(env)
        assert "CBS-Detailhandel" in ftp.nlst("/in")
        assert "DNB-DGS" in ftp.nlst("/in")
        with open(src, "rb") as fh:
            resp = ftp.storbinary("STOR /in/CBS-Detailhandel/detailhandel-1.xml", fh)
        ftp.quit()
        return resp

    kenmerk = kenmerk_of(await run(upload))
    await env.wait_status(kenmerk, "400", recipient=CBS)
    await env.wait_status(kenmerk, "400", recipient=HBAG)
    row = await document_row(env, kenmerk)
    assert row["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert row["mime_type"] == "application/xml"
    envelope = await (await env.conn()).fetchrow(
        "SELECT koppelvlak, sender_oin, aanleverkenmerk FROM envelopes WHERE kenmerk = $1",
        kenmerk,
    )
    assert tuple(envelope) == ("ftp", ALFA, "detailhandel-1.xml")

    name = f"detailhandel-1.xml.{kenmerk}.status.xml"

    def status_file() -> tuple[list[str], bytes]:
        ftp = login(env)
        names = ftp.nlst("/out")
        data: list[bytes] = []
        ftp.retrbinary(f"RETR /out/{name}", data.append)
        ftp.delete(f"/out/{name}")
        after = ftp.nlst("/out")
        ftp.quit()
        return names, b"".join(data) + b"\n<!--after-->" + "|".join(after).encode()

    names, body = await run(status_file)
    assert name in names
    text = body.decode()
    for code in ("105", "100", "110", "200", "301", "405", "400"):
        assert f"<statuscode>{code}</statuscode>" in text
    assert "ArrayOfStatusResultaat" in text
    assert name not in text.split("<!--after-->")[1]

    # the recipient finds the afleverRequest in its own /out/
    def recipient_out() -> bytes:
        ftp = ftps(env, CBS)
        ftp.login(CBS, "x")
        ftp.prot_p()
        data: list[bytes] = []
        ftp.retrbinary(f"RETR /out/{kenmerk}.afleverRequest.xml", data.append)
        ftp.quit()
        return b"".join(data)

    assert b"afleverRequest" in await run(recipient_out)


async def test_large_dnb_upload_200mib(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "dgs-2026q1.bin"
    digest = make_file(src, 200 * MiB)
    client = FtpsClient(
        "127.0.0.1",
        env.settings.ftp.port,
        env.pki / f"{ALFA}.crt",
        env.pki / f"{ALFA}.key",
        env.pki / "ca.crt",
    )
    started = asyncio.get_running_loop().time()
    kenmerk = uuid.UUID(await run(client.upload, "DNB-DGS", src))
    elapsed = asyncio.get_running_loop().time() - started
    await run(client.close)
    print(f"200 MiB upload: {200 / elapsed:.0f} MiB/s")
    row = await document_row(env, kenmerk)
    assert row["sha256"] == digest and row["size"] == 200 * MiB
    await env.wait_status(kenmerk, "301", timeout=60)

    def listed() -> list[str]:
        ftp = login(env)
        names = ftp.nlst("/out")
        ftp.quit()
        return names

    assert f"dgs-2026q1.bin.{kenmerk}.status.xml" in await run(listed)


async def test_interrupted_upload_resumed_with_rest(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "dgs-resume.bin"
    digest = make_file(src, 24 * MiB, seed=7)
    remote = "/in/DNB-DGS/dgs-resume.bin"

    def broken_upload() -> None:
        ftp = login(env)
        conn = ftp.transfercmd(f"STOR {remote}")
        with open(src, "rb") as fh:
            conn.sendall(fh.read(10 * MiB))
        # the client dies: TCP closed without TLS close_notify
        conn.shutdown(socket.SHUT_RDWR)
        conn.close()
        try:
            ftp.voidresp()
        except ftplib.Error as exc:
            assert str(exc).startswith("426")
        ftp.close()

    await run(broken_upload)
    count = await (await env.conn()).fetchval("SELECT count(*) FROM envelopes")
    assert count == 0

    def resume() -> tuple[int, str]:
        ftp = login(env)
        have = ftp.size(remote)
        assert have is not None and 0 < have <= 10 * MiB
        with open(src, "rb") as fh:
            fh.seek(have)
            resp = ftp.storbinary(f"STOR {remote}", fh, blocksize=MiB, rest=have)
        ftp.quit()
        return have, resp

    _have, resp = await run(resume)
    kenmerk = kenmerk_of(resp)
    row = await document_row(env, kenmerk)
    assert row["sha256"] == digest and row["size"] == 24 * MiB
    assert await (await env.conn()).fetchval("SELECT count(*) FROM envelopes") == 1
    await env.wait_status(kenmerk, "301", timeout=30)


async def test_curl_upload_and_list(env: Env, tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "curl-1.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)
    base = f"ftp://127.0.0.1:{env.settings.ftp.port}"
    tls = [
        "--ssl-reqd",
        "--cert",
        str(env.pki / f"{ALFA}.crt"),
        "--key",
        str(env.pki / f"{ALFA}.key"),
        "--cacert",
        str(env.pki / "ca.crt"),
        "-u",
        f"{ALFA}:",
        "-sS",
        "--max-time",
        "30",
    ]
    up = await run(
        subprocess.run,
        ["curl", *tls, "-T", str(src), f"{base}/in/CBS-Detailhandel/"],
    )
    assert up.returncode == 0
    await wait_for(lambda: _count(env), what="envelope from curl")
    ls = await run(
        lambda: subprocess.run(["curl", *tls, f"{base}/out/"], capture_output=True, text=True)
    )
    assert ls.returncode == 0 and "curl-1.xml." in ls.stdout
    plain = await run(
        lambda: subprocess.run(
            ["curl", "-sS", "-u", f"{ALFA}:", f"{base}/in/"], capture_output=True, text=True
        )
    )
    assert plain.returncode != 0


async def _count(env: Env) -> int:
    return int(await (await env.conn()).fetchval("SELECT count(*) FROM envelopes"))


# ---------------------------------------------------------------------------- refusals
async def test_plain_ftp_refused(env: Env) -> None:
    await env.start_gateway(components=("intake", "ftp"))

    def plain() -> str:
        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", env.settings.ftp.port, timeout=10)
        try:
            ftp.login(ALFA, "x")
        except ftplib.error_perm as exc:
            return str(exc)
        finally:
            ftp.close()
        return "logged in"

    assert (await run(plain)).startswith("530")


async def test_prot_c_refused_and_transfer_needs_prot_p(env: Env) -> None:
    await env.start_gateway(components=("intake", "ftp"))

    def go() -> tuple[str, str]:
        ftp = ftps(env)
        ftp.login(ALFA, "")
        ftp.voidcmd("PBSZ 0")
        with pytest.raises(ftplib.error_perm) as prot_c:
            ftp.voidcmd("PROT C")
        with pytest.raises(ftplib.error_perm) as pasv:
            ftp.voidcmd("PASV")
        ftp.close()
        return str(prot_c.value), str(pasv.value)

    prot_c, pasv = await run(go)
    assert prot_c.startswith("534") and pasv.startswith("521")


@pytest.mark.parametrize("cert", ["revoked", "untrusted", "expired", None])
async def test_bad_or_missing_client_certificate(env: Env, cert: str | None) -> None:
    await env.start_gateway(components=("intake", "ftp"))

    def go() -> str:
        if cert is None:
            ctx = client_ssl_context(None, None, env.pki / "ca.crt")
        else:
            ctx = client_ssl_context(
                env.pki / f"{cert}.crt", env.pki / f"{cert}.key", env.pki / "ca.crt"
            )
        ftp = ftplib.FTP_TLS(context=ctx, timeout=10)
        try:
            ftp.connect("127.0.0.1", env.settings.ftp.port)
            ftp.auth()
            ftp.login(ALFA, "")
        except ftplib.error_perm as exc:
            return str(exc)
        except (ssl.SSLError, OSError, EOFError) as exc:
            return f"tls: {exc!r}"
        finally:
            ftp.close()
        return "logged in"

    result = await run(go)
    assert result != "logged in"
    assert result.startswith("530") or result.startswith("tls")


async def test_user_must_equal_certificate_oin(env: Env) -> None:
    await env.start_gateway(components=("intake", "ftp"))

    def go() -> str:
        ftp = ftps(env, ALFA)
        try:
            ftp.login(BETA, "")
        except ftplib.error_perm as exc:
            return str(exc)
        finally:
            ftp.close()
        return "logged in"

    assert (await run(go)).startswith("530")


async def test_berichtsoort_not_allowed_and_path_traversal(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=("intake", "ftp"))
    src = tmp_path / "x.xml"
    src.write_bytes(b"<x/>")

    def go() -> dict[str, str]:
        ftp = login(env, BETA)  # Beta may send CBS-Detailhandel but not DNB-DGS
        seen = {"in": ",".join(ftp.nlst("/in"))}
        for label, path in [
            ("soort", "/in/DNB-DGS/x.xml"),
            ("omzet", "/in/Omzetbelasting/x.xml"),
            ("dotdot", "/in/CBS-Detailhandel/../../../etc/passwd"),
            ("up", "../../x.xml"),
            ("abs", "/etc/passwd"),
            ("long", "/in/CBS-Detailhandel/" + "a" * 41),
            ("odd", "/in/CBS-Detailhandel/x\u202e.xml"),
        ]:
            try:
                with open(src, "rb") as fh:
                    ftp.storbinary(f"STOR {path}", fh)
                seen[label] = "stored"
            except ftplib.error_perm as exc:
                seen[label] = str(exc)[:3]
        for label, path in [("cwd_up", "../.."), ("cwd_etc", "/etc")]:
            try:
                ftp.cwd(path)
                seen[label] = ftp.pwd()
            except ftplib.error_perm as exc:
                seen[label] = str(exc)[:3]
        seen["list_root"] = ",".join(sorted(ftp.nlst("/")))
        ftp.quit()
        return seen

    seen = await run(go)
    assert seen["in"] == "CBS-Detailhandel"
    assert seen["soort"] == "550" and seen["omzet"] == "550"
    assert seen["dotdot"] == "553" and seen["up"] == "553"
    assert seen["abs"] == "553" and seen["long"] == "553"
    assert seen["odd"] == "501"  # refused by the command parser (bidi override)
    assert seen["cwd_up"] == "553" and seen["cwd_etc"] == "550"
    assert seen["list_root"] == "in,out"
    assert await _count(env) == 0


async def test_oversize_upload_cut_off_and_removed(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=("intake", "ftp"))
    src = tmp_path / "big.bin"
    make_file(src, 21 * MiB)  # CBS-Detailhandel: max 20 MiB

    def go() -> tuple[str, int | None]:
        ftp = login(env)
        try:
            with open(src, "rb") as fh:
                ftp.storbinary("STOR /in/CBS-Detailhandel/big.xml", fh, blocksize=MiB)
            result = "stored"
        except (ftplib.error_perm, ftplib.error_temp) as exc:
            result = str(exc)[:3]
        except (OSError, EOFError):
            result = ftp.getresp()[:3] if False else "552?"
            ftp.close()
            ftp = login(env)
        size = FtpsClient._remote_size(ftp, "/in/CBS-Detailhandel/big.xml")
        ftp.quit()
        return result, size

    result, size = await run(go)
    assert result.startswith("552")
    assert size == 0
    assert await _count(env) == 0
    partial_dir = env.settings.resolve(env.settings.ftp.root_dir) / "partial" / ALFA
    assert not list(partial_dir.glob("*.part"))


async def test_aborted_upload_gives_no_envelope(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=("intake", "ftp"))

    def go() -> list[str]:
        ftp = login(env)
        conn = ftp.transfercmd("STOR /in/CBS-Detailhandel/abort.xml")
        conn.sendall(b"<x>" * 100000)
        ftp.sock.sendall(b"ABOR\r\n")  # type: ignore[union-attr]
        replies = [ftp.getline(), ftp.getline()]
        conn.close()
        ftp.quit()
        return replies

    replies = await run(go)
    assert replies[0].startswith("426") and replies[1].startswith("226")
    assert await _count(env) == 0


async def test_submit_client_cli(env: Env, tmp_path: Path) -> None:
    from adapters.ftp.client import CLI

    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "cli-1.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)
    result = await run(
        lambda: CLI.submit(
            url=f"ftps://127.0.0.1:{env.settings.ftp.port}",
            cert=env.pki / f"{ALFA}.crt",
            key=env.pki / f"{ALFA}.key",
            ca=env.pki / "ca.crt",
            berichtsoort="CBS-Detailhandel",
            file=src,
        )
    )
    kenmerk = uuid.UUID(result["kenmerk"])
    await env.wait_status(kenmerk, "301")
    with pytest.raises(FtpUploadError):
        await run(
            lambda: CLI.submit(
                url=f"ftps://127.0.0.1:{env.settings.ftp.port}",
                cert=env.pki / f"{ALFA}.crt",
                key=env.pki / f"{ALFA}.key",
                ca=env.pki / "ca.crt",
                berichtsoort="Omzetbelasting",
                file=src,
            )
        )


async def test_mime_type_kept_with_aanleverkenmerk_and_mime_type_option(
    env: Env, tmp_path: Path
) -> None:
    """The remote name is the aanleverkenmerk (no extension): the client announces the
    file's MIME type with SITE MIME (before: application/octet-stream, 311 for
    CBS-Detailhandel); --mime-type is sent as given; without SITE MIME (curl, lftp) the
    server derives it from the name, else from the first bytes."""
    from adapters.ftp.client import CLI

    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "cbs.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)

    def submit(kenmerk: str, mime_type: str = "") -> uuid.UUID:
        result = CLI.submit(
            url=f"ftps://127.0.0.1:{env.settings.ftp.port}",
            cert=env.pki / f"{ALFA}.crt",
            key=env.pki / f"{ALFA}.key",
            ca=env.pki / "ca.crt",
            berichtsoort="CBS-Detailhandel",
            file=src,
            aanleverkenmerk=kenmerk,
            mime_type=mime_type,
        )
        return uuid.UUID(result["kenmerk"])

    derived = await run(submit, "K-2026-001")
    explicit = await run(submit, "K-2026-002", "text/xml")
    for kenmerk, name, mime in (
        (derived, "K-2026-001", "application/xml"),
        (explicit, "K-2026-002", "text/xml"),
    ):
        await env.wait_status(kenmerk, "301")
        row = await document_row(env, kenmerk)
        assert (row["mime_type"], row["bestandsnaam"]) == (mime, name)

    def raw() -> tuple[str, str, str]:
        ftp = login(env)
        try:
            bad = _error(lambda: ftp.sendcmd("SITE MIME nonsense"))
            other = _error(lambda: ftp.sendcmd("SITE CHMOD 777 x"))
            with open(src, "rb") as fh:  # no SITE MIME, no extension: sniffed
                resp = ftp.storbinary("STOR /in/CBS-Detailhandel/K-2026-003", fh)
            return bad, other, resp
        finally:
            ftp.quit()

    bad, other, resp = await run(raw)
    assert bad.startswith("501") and other.startswith("504")
    sniffed = kenmerk_of(resp)
    await env.wait_status(sniffed, "301")
    assert (await document_row(env, sniffed))["mime_type"] == "application/xml"


def _error(fn: Callable[[], object]) -> str:
    try:
        fn()
    except ftplib.Error as exc:
        return str(exc)
    raise AssertionError("accepted")


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


@pytest.mark.slow
async def test_memory_bounded_1gib_upload_in_subprocess(env: Env, tmp_path: Path) -> None:
    """The gateway as its own process: a 1 GiB upload grows its RSS by < 100 MiB."""
    src = tmp_path / "dgs-1gib.bin"
    digest = await run(make_file, src, 1024 * MiB, 3)
    exe = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "digipoort"
    environ = dict(os.environ, DIGIPOORT_LIMITS__MAX_DOCUMENT_BYTES=str(4 * 1024**3))
    proc = subprocess.Popen(
        [str(exe), "serve", "--components", "intake,ftp", "--config", str(env.config_path)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        async def listening() -> bool:
            try:
                _, w = await asyncio.open_connection("127.0.0.1", env.settings.ftp.port)
            except OSError:
                return False
            w.close()
            return True

        await wait_for(listening, timeout=30, what="ftp component listening")
        # warm up: one small upload so every code path is loaded before the baseline
        small = tmp_path / "warm-up.bin"
        make_file(small, MiB)
        client = FtpsClient(
            "127.0.0.1",
            env.settings.ftp.port,
            env.pki / f"{ALFA}.crt",
            env.pki / f"{ALFA}.key",
            env.pki / "ca.crt",
        )
        await run(client.upload, "DNB-DGS", small)
        baseline = _proc_kib(proc.pid, "VmRSS")
        loop = asyncio.get_running_loop()
        started = loop.time()
        kenmerk = uuid.UUID(await run(client.upload, "DNB-DGS", src))
        elapsed = loop.time() - started
        await run(client.close)
        peak = _proc_kib(proc.pid, "VmHWM")
        growth_mib = (peak - baseline) / 1024
        print(
            f"1 GiB upload: {1024 / elapsed:.0f} MiB/s; RSS baseline {baseline / 1024:.0f} MiB,"
            f" peak {peak / 1024:.0f} MiB, growth {growth_mib:.0f} MiB"
        )
        assert growth_mib < 100
        row = await document_row(env, kenmerk)
        assert row["sha256"] == digest and row["size"] == 1024 * MiB
    finally:
        proc.terminate()
        try:
            await run(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_digipoort_submit_via_ftp_command(env: Env, tmp_path: Path) -> None:
    await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "cmd-1.xml"
    shutil.copy(SAMPLES / "cbs-detailhandel.xml", src)
    exe = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "digipoort"
    done = await run(
        lambda: subprocess.run(
            [str(exe), "submit", "--via", "ftp", "--config", str(env.config_path),
             "--cert", str(env.pki / f"{ALFA}.crt"), "--key", str(env.pki / f"{ALFA}.key"),
             "--berichtsoort", "CBS-Detailhandel", "--aanleverkenmerk", "K-cmd-1", str(src)],
            capture_output=True, text=True, timeout=60,
        )
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    kenmerk = uuid.UUID(done.stdout.strip().splitlines()[-1])
    await env.wait_status(kenmerk, "301")  # before SITE MIME: 311, octet-stream for "K-cmd-1"
    assert (await document_row(env, kenmerk))["bestandsnaam"] == "K-cmd-1"
