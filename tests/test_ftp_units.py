"""Pure parts of the FTP koppelvlak: command parser, path normaliser, status rendering,
partial uploads (fuzzed with hypothesis)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from adapters.ftp.commands import (
    KNOWN,
    MAX_LINE,
    CommandError,
    parse_command,
    parse_rest,
    reply,
)
from adapters.ftp.listformat import listing_line, mdtm
from adapters.ftp.partials import LimitExceeded, PartialArea, Upload
from adapters.ftp.paths import (
    PathRefused,
    check_upload_name,
    classify,
    mime_type_for,
    normalise,
    parse_mime_type,
)
from digipoort.status import Status
from routing.afleveren.ftp import render_statuses

SOORTEN = {"DNB-DGS", "CBS-Detailhandel"}


# ---------------------------------------------------------------------------- parser
def test_parse_basic_commands() -> None:
    assert parse_command(b"USER 00000099100000010000\r\n").arg == "00000099100000010000"
    assert parse_command(b"stor /in/DNB-DGS/a b.xml\r\n").verb == "STOR"
    assert parse_command(b"stor /in/DNB-DGS/a b.xml\r\n").arg == "/in/DNB-DGS/a b.xml"
    assert parse_command(b"\xff\xf4\xff\xf2ABOR\r\n").verb == "ABOR"
    assert parse_command(b"NOOP\n") == parse_command(b"NOOP\r\n")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"XYZZY\r\n", 500),
        (b"FOO\r\n", 502),
        (b"RETR a\x00b\r\n", 501),
        (b"RETR \xc3\x28\r\n", 501),
        (b"RETR " + b"a" * MAX_LINE + b"\r\n", 500),
        (b"\r\n", 500),
    ],
)
def test_parse_refusals(line: bytes, code: int) -> None:
    with pytest.raises(CommandError) as exc:
        parse_command(line)
    assert exc.value.code == code


@given(st.binary(max_size=2000))
@settings(max_examples=500, deadline=None)
def test_parser_total_on_any_bytes(line: bytes) -> None:
    try:
        cmd = parse_command(line)
    except CommandError as exc:
        assert exc.code in (500, 501, 502)
        return
    assert cmd.verb in KNOWN
    assert "\x00" not in cmd.arg and "\r" not in cmd.arg and "\n" not in cmd.arg


@given(st.sampled_from(sorted(KNOWN)), st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parser_roundtrip_printable(verb: str, arg: str) -> None:
    line = f"{verb} {arg}\r\n".encode()
    try:
        cmd = parse_command(line)
    except CommandError:
        return
    assert cmd.verb == verb and cmd.arg == arg


@given(st.text(max_size=300))
def test_reply_is_one_wellformed_reply(text: str) -> None:
    out = reply(550, text)
    assert out.endswith(b"\r\n")
    lines = out.decode().split("\r\n")[:-1]
    assert lines[-1].startswith("550 ")
    assert all("\x00" not in line for line in lines)


def test_parse_rest() -> None:
    assert parse_rest("0") == 0 and parse_rest("123") == 123
    assert parse_rest("-1") is None and parse_rest("1e3") is None and parse_rest("") is None
    assert parse_rest("١٢") is None  # non-ASCII digits


# ---------------------------------------------------------------------------- paths
@pytest.mark.parametrize(
    ("cwd", "arg", "expected"),
    [
        ("/", "in", "/in"),
        ("/in", "DNB-DGS/x.bin", "/in/DNB-DGS/x.bin"),
        ("/in/DNB-DGS", "..", "/in"),
        ("/in/DNB-DGS", "/out/./a", "/out/a"),
        ("/", "//in///DNB-DGS/", "/in/DNB-DGS"),
    ],
)
def test_normalise(cwd: str, arg: str, expected: str) -> None:
    assert normalise(cwd, arg) == expected


@pytest.mark.parametrize(
    "arg",
    ["../x", "/in/../../etc", "a\x00b", "a\\..\\b", "x\u202e", "e\u0301", "a" * 256, "/in/..."],
)
def test_normalise_refuses(arg: str) -> None:
    with pytest.raises(PathRefused):
        normalise("/", arg)


@given(st.sampled_from(["/", "/in", "/in/DNB-DGS", "/out"]), st.text(max_size=300))
@settings(max_examples=1000, deadline=None)
def test_normalise_never_escapes(cwd: str, arg: str) -> None:
    try:
        path = normalise(cwd, arg)
    except PathRefused:
        return
    assert path.startswith("/")
    parts = path.split("/")[1:]
    assert ".." not in parts and "." not in parts
    assert "\x00" not in path and "\\" not in path
    if path != "/":
        assert all(parts)
    # idempotent, and what it names is one of the account's nodes
    assert normalise("/", path) == path
    node = classify(path, SOORTEN)
    assert node.kind in ("root", "in", "soort", "upload", "out", "outfile", "none")


def test_classify_only_allowed_soorten() -> None:
    assert classify("/in/DNB-DGS/x", SOORTEN).kind == "upload"
    assert classify("/in/Omzetbelasting/x", SOORTEN).kind == "none"
    assert classify("/in/DNB-DGS/x/y", SOORTEN).kind == "none"
    assert classify("/out/a", SOORTEN).kind == "outfile"


def test_upload_names() -> None:
    check_upload_name("a" * 40)
    for bad in ["a" * 41, ".hidden", "a b", "ü.xml", "-x"]:
        with pytest.raises(PathRefused):
            check_upload_name(bad)


@pytest.mark.parametrize(
    ("name", "head", "mime"),
    [
        ("d.xml", b"", "application/xml"),
        ("d.PDF", b"", "application/pdf"),
        ("K-2026-001", b'<?xml version="1.0"?><a/>', "application/xml"),
        ("K-2026-001", b"\xef\xbb\xbf \r\n<detailhandel/>", "application/xml"),
        ("K-2026-001", b"%PDF-1.7", "application/pdf"),
        ("K-2026-001", b"PK\x03\x04rest", "application/zip"),
        ("K-2026-001", b"\x1f\x8b\x08", "application/gzip"),
        ("K-2026-001", b"< not xml", "application/octet-stream"),
        ("dgs.bin", b"<?xml", "application/xml"),
        ("dgs.bin", b"\x00\x01", "application/octet-stream"),
        ("d.csv", b"<?xml", "text/csv"),  # the extension wins
    ],
)
def test_mime_type_by_name_then_content(name: str, head: bytes, mime: str) -> None:
    assert mime_type_for(name, head) == mime


def test_site_mime_argument() -> None:
    assert parse_mime_type(" Text/XML ") == "text/xml"
    assert parse_mime_type("application/vnd.cbs+xml") == "application/vnd.cbs+xml"
    for bad in ["", "xml", "text/", "/xml", "text/xml; charset=utf-8", "a/b/c", "t\x00/x"]:
        assert parse_mime_type(bad) is None, bad


# ---------------------------------------------------------------------------- status files
def test_status_file_validates_against_koppelvlak_xsd() -> None:
    kenmerk = uuid.uuid4()
    statuses = [
        Status(kenmerk, "105"),
        Status(kenmerk, "311", foutcode="VAS500", foutbeschrijving="ongeldig", details="r1"),
    ]
    xml = render_statuses(("00000099100000010000", "OIN"), statuses)
    xsd_path = Path("/work/shared/specs/wus/digipoort-koppelvlak-1.2.xsd")
    if not xsd_path.exists():
        pytest.skip("koppelvlak XSD not available")
    wrapper = etree.fromstring(xml)
    items = wrapper.findall("{*}StatusResultaat")
    assert [i.findtext("{*}statuscode") for i in items] == ["105", "311"]
    # validate each StatusResultaat via the response element that carries the array
    ns = "http://logius.nl/digipoort/koppelvlakservices/1.2/"
    resp = etree.Element(f"{{{ns}}}getStatussenProcesResponse")
    ret = etree.SubElement(resp, f"{{{ns}}}getStatussenProcesReturn")
    for i in items:
        ret.append(i)
    schema = etree.XMLSchema(etree.parse(str(xsd_path)))
    schema.assertValid(resp)


# ---------------------------------------------------------------------------- partials
async def test_resume_rehashes_the_kept_part(tmp_path: Path) -> None:
    area = PartialArea(tmp_path, "00000099100000010000")
    data = os.urandom(3 * 1024 * 1024 + 17)
    first = Upload(area, "/in/DNB-DGS/f", limit=10**9, quota_left=10**9)
    await first.open(0)
    await first.write(data[:2_000_000])
    await first.close(durable=False)
    assert area.size("/in/DNB-DGS/f") == 2_000_000
    second = Upload(area, "/in/DNB-DGS/f", limit=10**9, quota_left=10**9)
    await second.open(1_500_000)  # REST below what was kept: truncated there
    await second.write(data[1_500_000:])
    await second.close(durable=True)
    assert second.sha256 == hashlib.sha256(data).hexdigest()
    assert area.file("/in/DNB-DGS/f").read_bytes() == data
    assert [p.path for p in area.list()] == ["/in/DNB-DGS/f"]


async def test_limit_and_quota_while_streaming(tmp_path: Path) -> None:
    area = PartialArea(tmp_path, "00000099100000010000")
    up = Upload(area, "/in/DNB-DGS/g", limit=1000, quota_left=10**9)
    await up.open(0)
    with pytest.raises(LimitExceeded) as exc:
        await up.write(b"x" * 1001)
    assert exc.value.reason == "too_large"
    await up.discard()
    assert area.size("/in/DNB-DGS/g") is None
    up = Upload(area, "/in/DNB-DGS/h", limit=10**9, quota_left=10)
    await up.open(0)
    with pytest.raises(LimitExceeded) as exc:
        await up.write(b"x" * 11)
    assert exc.value.reason == "quota"
    await up.discard()


async def test_partials_expire(tmp_path: Path) -> None:
    area = PartialArea(tmp_path, "00000099100000010000")
    up = Upload(area, "/in/DNB-DGS/old", limit=10**9, quota_left=10**9)
    await up.open(0)
    await up.write(b"abc")
    await up.close(durable=False)
    assert await asyncio.to_thread(area.expire, 3600) == 0
    assert area.expire(3600, now=time.time() + 7200) == 1
    assert area.list() == []


def test_listing_lines_and_mdtm() -> None:
    mtime = 1772443815.0  # 2026-03-02 09:30:15 UTC
    assert listing_line("nlst", "a.xml", False, 3, mtime) == "a.xml\r\n"
    mlsd = listing_line("mlsd", "in", True, 0, mtime)
    assert mlsd == "type=dir;size=0;modify=20260302093015; in\r\n"
    assert listing_line("list", "a.xml", False, 3, mtime) == (
        "-rw-r----- 1 ftp ftp            3 Mar 02 09:30 a.xml\r\n"
    )
    assert mdtm(mtime) == "20260302093015"
