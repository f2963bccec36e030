"""A 200 MiB FTP upload reaches DNB as a Grote Berichten reference; the reference
subscriber fetches it from the WUS port, resumes an interrupted download with Range,
verifies the checksum, with flat memory."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
import uuid
from pathlib import Path

from adapters.ftp.client import FtpsClient
from digipoort.pki.tls import client_ssl_context
from routing.afleveren.ftp import AFLEVER_SUFFIX
from routing.fetcher import ReferenceFetcher
from routing.grote_berichten import REFERENCE_MIME_TYPE
from routing.subscriber import subscribe
from tests.support import ALFA, DNB, Env
from tests.test_ftp import MiB, login, make_file, run
from tests.test_grote_berichten import inhoud

COMPONENTS = ("intake", "validator", "router", "ftp", "wus")


async def test_200mib_ftp_upload_fetched_by_reference_and_resumed(env: Env, tmp_path: Path) -> None:
    gw = await env.start_gateway(components=COMPONENTS)
    src = tmp_path / "dgs-2026q3.bin"
    digest = make_file(src, 200 * MiB)
    pki = env.dir / "pki"
    client = FtpsClient(
        "127.0.0.1",
        env.settings.ftp.port,
        pki / f"{ALFA}.crt",
        pki / f"{ALFA}.key",
        pki / "ca.crt",
    )
    kenmerk = str(await run(client.upload, "DNB-DGS", src))
    await run(client.close)
    await env.wait_status(uuid.UUID(kenmerk), "400", recipient=DNB, timeout=120)

    # the afleverRequest in DNB's queue carries a reference, not 200 MiB
    [msg] = await env.queue_messages(DNB, expect=1)
    assert len(msg.body) < 10_000
    mime, _ = inhoud(msg.body)
    assert mime == REFERENCE_MIME_TYPE
    await gw.broker.publish_aflever(  # type: ignore[union-attr]
        DNB, uuid.UUID(kenmerk), "DNB-DGS", msg.body
    )  # put it back for the subscriber

    # the FTP way to receive: DNB finds the same afleverRequest (with the reference) in /out/
    def from_outbox() -> bytes:
        ftp = login(env, DNB)
        chunks: list[bytes] = []
        ftp.retrbinary(f"RETR /out/{kenmerk}{AFLEVER_SUFFIX}", chunks.append)
        ftp.quit()
        return b"".join(chunks)

    mime, _ = inhoud(await run(from_outbox))
    assert mime == REFERENCE_MIME_TYPE

    # an earlier attempt broke off halfway: its partial download is on disk
    out = tmp_path / "inbox"
    part = out / ".downloads" / f"{kenmerk}.0.part"
    part.parent.mkdir(parents=True)
    with open(src, "rb") as fh, open(part, "wb") as partial:
        partial.write(fh.read(100 * MiB))

    fetcher = ReferenceFetcher(
        client_ssl_context(pki / f"{DNB}.crt", pki / f"{DNB}.key", pki / "ca.crt"),
        retry_delay=0.01,
    )
    tracemalloc.start()
    try:
        handled = await subscribe(env.amqp_url, DNB, out, count=1, fetcher=fetcher)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert handled == 1
    stored = out / kenmerk / "dgs-2026q3.bin"
    assert stored.stat().st_size == 200 * MiB

    def sha() -> str:
        h = hashlib.sha256()
        with open(stored, "rb") as fh:
            while chunk := fh.read(MiB):
                h.update(chunk)
        return h.hexdigest()

    assert await asyncio.to_thread(sha) == digest
    assert peak < 32 * MiB, f"subscriber held {peak / MiB:.0f} MiB"
    conn = await env.conn()
    fetched = await conn.fetchrow(
        "SELECT bytes_sent, first_complete_at FROM gb_fetches WHERE kenmerk = $1::uuid", kenmerk
    )
    assert fetched["first_complete_at"] is not None
    assert fetched["bytes_sent"] == 100 * MiB, "only the missing half was transferred"
