"""The non-repudiation archive on its own (no servers): records are durable and chained,
a day closes with a signed manifest, ``verify`` detects one changed byte in a segment or
one changed manifest line, ``show`` finds an envelope's exchanges, purge honours the
retention, and a failing archive is reported (the adapters then refuse: test_archive_e2e)."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from digipoort.archive import manifest, recorder, writer
from digipoort.archive.cms import load_identity
from digipoort.archive.days import MANIFEST, SIGNATURE, TIMESTAMP, segment_files
from digipoort.archive.tsa import issue_token
from digipoort.archive.verify import verify
from digipoort.cli import main as cli_main
from digipoort.config import Settings, load_settings

DAY = "2026-01-05"


def _config(tmp: Path, pki: Path, **archive: object) -> Path:
    lines = [
        "[pki]",
        f'ca_file = "{pki / "ca.crt"}"',
        f'intermediates_file = "{pki / "chain.pem"}"',
        f'cert_file = "{pki / "server.crt"}"',
        f'key_file = "{pki / "server.key"}"',
        "[archive]",
        'dir = "archive"',
        "maintenance = false",
        *(f"{k} = {json.dumps(v)}" for k, v in archive.items()),
    ]
    path = tmp / "digipoort.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def cfg(tmp_path: Path, pki_dir: Path) -> Path:
    return _config(tmp_path, pki_dir)


@pytest.fixture
def settings(cfg: Path) -> Settings:
    return load_settings(cfg)


@pytest.fixture
def on_day(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The writer's clock on DAY (the day is over: it can be closed)."""
    monkeypatch.setattr(writer, "utc_now", lambda: datetime(2026, 1, 5, 12, 0, tzinfo=UTC))
    yield


async def _exchange(settings: Settings, kenmerk: str, body: bytes = b"<request/>") -> None:
    archived = recorder(settings).exchange("wus", peer=("192.0.2.7", 4711))
    assert await archived.received("wus.request", body, oin="00000001", operation="aanleveren")
    assert await archived.answered("wus.response", b"<response/>", kenmerk=kenmerk)


def _cli(cfg: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_main, ["archive", *args, "--config", str(cfg)])
    return result.exit_code, result.output


def _segment(settings: Settings, day: str = DAY) -> Path:
    [path] = segment_files(settings.resolve(settings.archive.dir) / day)
    return path


def _flip(path: Path, offset: int) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


async def test_records_are_chained_and_an_open_day_verifies(
    settings: Settings, cfg: Path, on_day: None
) -> None:
    kenmerken = [str(uuid.uuid4()) for _ in range(20)]
    await asyncio.gather(*(_exchange(settings, k) for k in kenmerken))  # one group commit or few
    [report] = verify(settings)
    assert report.ok and report.state == "open" and report.entries == 40
    code, out = _cli(cfg, "verify", "--json")
    assert code == 0 and json.loads(out)["ok"] is True


async def test_a_closed_day_verifies_and_is_read_only(
    settings: Settings, cfg: Path, on_day: None, monkeypatch: pytest.MonkeyPatch, pki_dir: Path
) -> None:
    kenmerk = str(uuid.uuid4())
    await _exchange(settings, kenmerk)
    monkeypatch.undo()  # back to today: DAY is over
    code, out = _cli(cfg, "close", "--day", DAY, "--json")
    assert code == 0 and json.loads(out) == {"closed": [DAY]}
    day_dir = settings.resolve(settings.archive.dir) / DAY
    assert (day_dir / MANIFEST).exists() and (day_dir / SIGNATURE).exists()
    assert _segment(settings).stat().st_mode & 0o777 == 0o444
    assert day_dir.stat().st_mode & 0o777 == 0o555
    code, out = _cli(cfg, "verify", "--day", DAY, "--json")
    [day] = json.loads(out)["days"]
    assert code == 0 and day["ok"] and day["state"] == "closed" and day["entries"] == 2
    server = x509.load_pem_x509_certificates((pki_dir / "server.crt").read_bytes())[0]
    assert day["signer"] == server.subject.rfc4514_string()
    assert day["signed_at"][:10] == datetime.now(UTC).date().isoformat()  # the close time
    # closing again changes nothing
    assert manifest.close_day(settings, DAY) is False


@pytest.mark.parametrize("where", ["payload", "header", "last byte"])
async def test_one_changed_byte_in_a_closed_segment_is_detected(
    settings: Settings, cfg: Path, on_day: None, where: str
) -> None:
    await _exchange(settings, str(uuid.uuid4()), body=b"<request>original</request>")
    manifest.close_day(settings, DAY)
    segment = _segment(settings)
    data = segment.read_bytes()
    offset = {
        "payload": data.index(b"original"),
        "header": data.index(b'"kind"') + 2,
        "last byte": len(data) - 2,
    }[where]
    _flip(segment, offset)
    code, out = _cli(cfg, "verify", "--day", DAY)
    assert code == 1 and "BAD" in out and "problem" in out, out


async def test_one_changed_byte_in_an_open_segment_is_detected(
    settings: Settings, on_day: None
) -> None:
    await _exchange(settings, str(uuid.uuid4()), body=b"<request>original</request>")
    segment = _segment(settings)
    _flip(segment, segment.read_bytes().index(b"original"))
    [report] = verify(settings)
    assert not report.ok and "SHA-256" in report.problems[0]
    with pytest.raises(manifest.CloseFailed):  # a damaged day is never sealed
        manifest.close_day(settings, DAY)


@pytest.mark.parametrize("line", [0, 1, -1])
async def test_one_changed_manifest_line_is_detected(
    settings: Settings, on_day: None, line: int
) -> None:
    await _exchange(settings, str(uuid.uuid4()))
    manifest.close_day(settings, DAY)
    path = settings.resolve(settings.archive.dir) / DAY / MANIFEST
    lines = path.read_bytes().splitlines(keepends=True)
    value = json.loads(lines[line])
    key = {0: "closed_at", 1: "entries", -1: "entries"}[line]
    value[key] = value[key] + 1 if isinstance(value[key], int) else "2026-01-06T00:00:00Z"
    lines[line] = json.dumps(value, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    path.chmod(0o644)
    path.write_bytes(b"".join(lines))
    [report] = verify(settings, DAY)
    assert not report.ok
    assert any("signature" in p for p in report.problems), report.problems


async def test_removed_or_added_segments_are_detected(settings: Settings, on_day: None) -> None:
    await _exchange(settings, str(uuid.uuid4()))
    manifest.close_day(settings, DAY)
    day_dir = settings.resolve(settings.archive.dir) / DAY
    day_dir.chmod(0o755)
    (day_dir / "intruder-1-000000-abcdef.seg").write_bytes(b"")
    [report] = verify(settings, DAY)
    assert any("not listed" in p for p in report.problems)
    (day_dir / "intruder-1-000000-abcdef.seg").unlink()
    _segment(settings).unlink()
    [report] = verify(settings, DAY)
    assert any("missing" in p for p in report.problems)


async def test_a_write_cut_short_at_the_end_is_not_damage(settings: Settings, on_day: None) -> None:
    """A crash between write and fsync leaves part of an entry nobody was told about."""
    await _exchange(settings, str(uuid.uuid4()))
    segment = _segment(settings)
    with open(segment, "ab") as fh:
        fh.write(b'{"kind":"wus.req')
    [report] = verify(settings)
    assert report.ok and any("cut short" in n for n in report.notes)
    assert manifest.close_day(settings, DAY)
    [report] = verify(settings, DAY)
    assert report.ok, report.problems


async def test_show_prints_what_was_received_and_answered(
    settings: Settings, cfg: Path, on_day: None, tmp_path: Path
) -> None:
    kenmerk = str(uuid.uuid4())
    await _exchange(settings, str(uuid.uuid4()))  # another envelope
    await _exchange(settings, kenmerk, body=b"<aanleverRequest>hier</aanleverRequest>")
    code, out = _cli(cfg, "show", kenmerk, "--json", "--out", str(tmp_path / "out"))
    assert code == 0, out
    entries = json.loads(out)["entries"]
    assert [e["kind"] for e in entries] == ["wus.request", "wus.response"]
    assert entries[0]["payload"] == "<aanleverRequest>hier</aanleverRequest>"
    assert entries[0]["facts"]["peer"] == "192.0.2.7" and entries[0]["oin"] == "00000001"
    assert entries[1]["kenmerk"] == kenmerk
    written = sorted(p.read_bytes() for p in (tmp_path / "out").iterdir())
    assert b"<aanleverRequest>hier</aanleverRequest>" in written
    code, out = _cli(cfg, "show", kenmerk)
    assert code == 0 and "wus.request" in out and "hier" in out
    code, out = _cli(cfg, "show", str(uuid.uuid4()))
    assert code != 0 and "not in the archive" in out


async def test_purge_removes_closed_days_past_the_retention_only(
    settings: Settings, on_day: None
) -> None:
    await _exchange(settings, str(uuid.uuid4()))
    root = settings.resolve(settings.archive.dir)
    (root / "2026-01-04").mkdir()  # an old day that was never closed: kept
    manifest.close_day(settings, DAY)
    settings.archive.retention_days = 30
    assert manifest.purge(settings, now=datetime(2026, 2, 1, tzinfo=UTC)) == []
    assert manifest.purge(settings, now=datetime(2026, 2, 10, tzinfo=UTC)) == [DAY]
    assert not (root / DAY).exists() and (root / "2026-01-04").exists()


async def test_maintenance_closes_days_that_are_over(settings: Settings, on_day: None) -> None:
    await _exchange(settings, str(uuid.uuid4()))
    assert manifest.maintain(settings, now=datetime(2026, 1, 6, 0, 1, tzinfo=UTC)) == []  # grace
    assert manifest.maintain(settings, now=datetime(2026, 1, 6, 0, 6, tzinfo=UTC)) == [DAY]
    [report] = verify(settings, DAY)
    assert report.ok and report.state == "closed"


async def test_an_unwritable_archive_is_reported_not_raised(tmp_path: Path, pki_dir: Path) -> None:
    (tmp_path / "archive").write_text("a file where the directory should be")
    settings = load_settings(_config(tmp_path, pki_dir))
    archived = recorder(settings).exchange("smtp")
    assert await archived.received("smtp.message", b"mail") is False


async def test_disabled_archive_records_nothing(tmp_path: Path, pki_dir: Path) -> None:
    settings = load_settings(_config(tmp_path, pki_dir, enabled=False))
    archived = recorder(settings).exchange("wus")
    assert await archived.received("wus.request", b"x", operation="aanleveren")
    assert not (tmp_path / "archive").exists()


async def test_status_queries_are_not_archived(settings: Settings) -> None:
    archived = recorder(settings).exchange("wus")
    assert await archived.received("wus.request", b"x", operation="getStatussenProces")
    assert await archived.answered("wus.response", b"y")
    assert not settings.resolve(settings.archive.dir).exists()


def test_segments_are_created_exclusively(settings: Settings) -> None:
    root = settings.resolve(settings.archive.dir)
    seg = writer._Segment(root, datetime(2026, 1, 5, tzinfo=UTC))
    try:
        with pytest.raises(FileExistsError):
            os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    finally:
        seg.close()


@pytest.fixture
def tsa(pki_dir: Path) -> Iterator[str]:
    """A minimal RFC 3161 TSA over HTTP (digipoort.archive.tsa.issue_token)."""
    key, certs = load_identity(pki_dir / "server.crt", pki_dir / "server.key")
    assert isinstance(key, rsa.RSAPrivateKey)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answer = issue_token(body, key, certs[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tsa"
    server.shutdown()
    server.server_close()


async def test_manifest_time_stamped_by_a_tsa(
    tmp_path: Path, pki_dir: Path, tsa: str, on_day: None
) -> None:
    settings = load_settings(_config(tmp_path, pki_dir, tsa_url=tsa))
    await _exchange(settings, str(uuid.uuid4()))
    assert manifest.close_day(settings, DAY)
    [report] = verify(settings, DAY)
    assert report.ok and report.timestamped, report.problems
    settings.archive.tsa_ca_file = pki_dir / "ca.crt"  # the TSA is not issued by the root
    [report] = verify(settings, DAY)
    assert any("not in archive.tsa_ca_file" in p for p in report.problems)
    settings.archive.tsa_ca_file = pki_dir / "chain.pem"  # intermediate + root
    [report] = verify(settings, DAY)
    assert report.ok, report.problems
    token = settings.resolve(settings.archive.dir) / DAY / TIMESTAMP
    _flip(token, len(token.read_bytes()) - 1)  # in the TSA's signature value
    [report] = verify(settings, DAY)
    assert not report.ok and any("time-stamp" in p for p in report.problems)


async def test_after_a_failed_write_the_next_record_goes_to_a_fresh_segment(
    settings: Settings, on_day: None
) -> None:
    rec = recorder(settings)
    await _exchange(settings, str(uuid.uuid4()))
    assert rec._writer is not None and rec._writer._segment is not None
    os.close(rec._writer._segment.fd)  # the disk "fails" under the writer (EBADF)
    failed = rec.exchange("wus")
    assert await failed.received("wus.request", b"lost", operation="aanleveren") is False
    await _exchange(settings, str(uuid.uuid4()))
    day_dir = settings.resolve(settings.archive.dir) / DAY
    assert len(segment_files(day_dir)) == 2
    [report] = verify(settings, DAY)
    assert report.ok and report.entries == 4, report.problems
    assert manifest.close_day(settings, DAY)
