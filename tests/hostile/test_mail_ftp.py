"""Hostile input against SMTP, POP3 and FTPS, table-driven: a new case is one line.

The gateway runs as its own process (``digipoort serve``, JSON logs at level info), so
every case is checked from the outside, as an operator sees it: the protocol reply, the
structured log line ``<protocol>.refused`` with the case's reason, and
``digipoort_<protocol>_refused_total{reason}`` on ``/metrics`` up by exactly one.

Tables:
* ``PIPELINED`` - plaintext commands pipelined behind STARTTLS/STLS/AUTH TLS in one write
  (CVE-2011-0411 class) are never executed inside TLS;
* ``SMTP_COMMANDS`` - one command after EHLO, STARTTLS (Alfa's certificate), EHLO;
* ``SMTP_MAILS`` - a whole mail to ``douane-uitvoer@``;
* ``POP3_LINES`` / ``FTP_LINES`` - one line, before or after the TLS upgrade.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio

from digipoort.pki import client_ssl_context
from tests.support import ALFA, DOUANE, Env, create_env, destroy_env, wait_for

DOMAIN = "digipoort.test"
EXE = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "digipoort"
COMPONENTS = "intake,validator,router,smtp,pop3,smtpreturns,ftp"
IDLE = 4  # seconds: the idle time-out of every protocol in the gateway process
#: what a reply may never contain: exception class names, aiosmtpd's "Error:" texts
LEAK = re.compile(rb"\(\w*(Error|Exception|Defect)\)|Error:|Traceback")


# -- the gateway process -------------------------------------------------------------------
@dataclass
class Gateway:
    env: Env
    proc: subprocess.Popen[bytes]
    lines: list[dict[str, object]] = field(default_factory=list)

    @property
    def ports(self) -> dict[str, int]:
        s = self.env.settings
        return {"smtp": s.smtp.port, "pop3": s.pop3.port, "ftp": s.ftp.port}

    def ctx(self, who: str = ALFA) -> ssl.SSLContext:
        pki = self.env.pki
        return client_ssl_context(pki / f"{who}.crt", pki / f"{who}.key", pki / "ca.crt")

    def refused_total(self, proto: str, reason: str) -> float:
        url = f"http://127.0.0.1:{self.env.settings.http.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        want = f'digipoort_{proto}_refused_total{{reason="{reason}"}} '
        for line in text.splitlines():
            if line.startswith(want):
                return float(line[len(want) :])
        return 0.0

    def refusal_lines(self, proto: str, reason: str, since: int) -> list[dict[str, object]]:
        return [
            e
            for e in self.lines[since:]
            if e.get("event") == f"{proto}.refused" and e.get("reason") == reason
        ]


def _collect(stream: object, into: list[dict[str, object]]) -> None:
    for raw in stream:  # type: ignore[attr-defined]
        try:
            entry = json.loads(raw)
        except ValueError:
            entry = {"event": "<not json>", "raw": raw[:300].decode(errors="replace")}
        into.append(entry)


@pytest_asyncio.fixture(scope="module")
async def gateway(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path, template_db: str
) -> AsyncIterator[Gateway]:
    env = await create_env(tmp_path_factory.mktemp("hostile"), pki_dir, template_db)
    environ = dict(
        os.environ,
        DIGIPOORT_LOG_LEVEL="info",
        **{f"DIGIPOORT_{p}__TIMEOUT_SECONDS": str(IDLE) for p in ("SMTP", "POP3", "FTP")},
    )
    proc = subprocess.Popen(
        [str(EXE), "serve", "--components", COMPONENTS, "--config", str(env.config_path)],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    gw = Gateway(env, proc)
    assert proc.stderr is not None
    threading.Thread(target=_collect, args=(proc.stderr, gw.lines), daemon=True).start()

    async def listening() -> bool:
        for port in gw.ports.values():
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            w.close()
        return True

    try:
        await wait_for(listening, timeout=60, what="the gateway process listening")
        yield gw
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await destroy_env(env)


# -- a line-oriented client over a plain socket, upgraded to TLS on request ------------------
class Wire:
    def __init__(self, port: int) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def reply(self) -> bytes:
        """One reply; SMTP/FTP multi-line replies (``NNN-``) are joined."""
        lines = [self.line()]
        while re.match(rb"\d{3}-", lines[-1]):
            lines.append(self.line())
        return b"".join(lines)

    def tls(self, context: ssl.SSLContext) -> None:
        assert not self.buf, f"plaintext left before TLS: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")

    def close(self) -> None:
        self.sock.close()


def _smtp_tls(gw: Gateway) -> Wire:
    w = Wire(gw.ports["smtp"])
    w.reply()
    w.send(b"EHLO hostile\r\n")
    w.reply()
    w.send(b"STARTTLS\r\n")
    assert w.reply().startswith(b"220")
    w.tls(gw.ctx())
    w.send(b"EHLO hostile\r\n")
    ehlo = w.reply()
    assert b"250-AUTH" not in ehlo and b"250 AUTH" not in ehlo, ehlo  # no empty AUTH
    return w


async def expect_refusal(
    gw: Gateway, proto: str, reason: str, run: Callable[[], bytes], want: bytes
) -> bytes:
    """Run one case; check reply, one log line and one metric increment."""
    before = await asyncio.to_thread(gw.refused_total, proto, reason)
    since = len(gw.lines)
    reply = await asyncio.to_thread(run)
    assert reply.startswith(want), reply
    assert not LEAK.search(reply), reply

    async def logged() -> list[dict[str, object]] | None:
        return gw.refusal_lines(proto, reason, since) or None

    await wait_for(logged, timeout=10, what=f"log line {proto}.refused reason={reason}")
    after = await asyncio.to_thread(gw.refused_total, proto, reason)
    assert after - before == 1, (reason, before, after)
    assert len(gw.refusal_lines(proto, reason, since)) == 1
    return reply


# -- STARTTLS command injection --------------------------------------------------------------
def _pipelined_smtp(gw: Gateway, injected: bytes, probe: bytes) -> bytes:
    w = Wire(gw.ports["smtp"])
    w.reply()
    w.send(b"EHLO hostile\r\n")
    w.reply()
    w.send(injected)
    assert w.reply().startswith(b"220")
    w.tls(gw.ctx())
    w.send(probe)
    try:
        return w.reply()
    finally:
        w.close()


def _pipelined_pop3(gw: Gateway, injected: bytes, probe: bytes) -> bytes:
    w = Wire(gw.ports["pop3"])
    w.line()
    w.send(injected)
    assert w.line().startswith(b"+OK")
    w.tls(gw.ctx())
    w.send(probe)
    try:
        return w.line()
    finally:
        w.close()


def _pipelined_ftp(gw: Gateway, injected: bytes, probe: bytes) -> bytes:
    w = Wire(gw.ports["ftp"])
    w.reply()
    w.send(injected)
    assert w.reply().startswith(b"234")
    w.tls(gw.ctx())
    w.send(probe)
    try:
        return w.reply()
    finally:
        w.close()


_A = ALFA.encode()
# (id, conversation, plaintext sent in one write, first command inside TLS, its reply)
PIPELINED = [
    ("smtp_noop", _pipelined_smtp, b"STARTTLS\r\nNOOP\r\n", b"QUIT\r\n", b"221"),
    ("smtp_mail", _pipelined_smtp, b"STARTTLS\r\nMAIL FROM:<x@y>\r\n", b"QUIT\r\n", b"221"),
    ("pop3_capa", _pipelined_pop3, b"STLS\r\nCAPA\r\n", b"QUIT\r\n", b"+OK bye"),
    ("pop3_user", _pipelined_pop3, b"STLS\r\nUSER " + _A + b"\r\n", b"PASS x\r\n", b"-ERR USER"),
    ("ftp_user", _pipelined_ftp, b"AUTH TLS\r\nUSER " + _A + b"\r\n", b"NOOP\r\n", b"200"),
    ("ftp_pass", _pipelined_ftp, b"AUTH TLS\r\nUSER " + _A + b"\r\n", b"PASS x\r\n", b"503"),
]


@pytest.mark.parametrize(
    ("conversation", "injected", "probe", "want"),
    [c[1:] for c in PIPELINED],
    ids=[c[0] for c in PIPELINED],
)
async def test_starttls_injection(
    gateway: Gateway,
    conversation: Callable[[Gateway, bytes, bytes], bytes],
    injected: bytes,
    probe: bytes,
    want: bytes,
) -> None:
    proto = conversation.__name__.rsplit("_", 1)[-1]
    await expect_refusal(
        gateway,
        proto,
        "pipelined_before_tls",
        lambda: conversation(gateway, injected, probe),
        want,
    )


# -- SMTP commands ---------------------------------------------------------------------------
# (id, command after EHLO/STARTTLS/EHLO, reply prefix, reason)
SMTP_COMMANDS = [
    ("starttls_inside_tls", b"STARTTLS", b"503 5.5.1", "starttls_twice"),
    ("nul_in_mail_from", b"MAIL FROM:<a\x00b@x.test>", b"501 5.1.7", "bad_mail_from"),
    ("ctrl_in_mail_from", b"MAIL FROM:<a\x01b@x.test>", b"501 5.1.7", "bad_mail_from"),
    ("bidi_in_mail_from", "MAIL FROM:<a\u202eb@x.test>".encode(), b"500 5.5.2", "non_ascii"),
    ("auth_plain", b"AUTH PLAIN AGFiYwBkZWY=", b"502 5.5.1", "auth_not_supported"),
    ("unknown_command", b"XYZZY", b"500 5.5.1", "unknown_command"),
    ("rcpt_before_mail", b"RCPT TO:<a@b.test>", b"503 5.5.1", "sequence"),
    ("data_before_rcpt", b"DATA", b"503 5.5.1", "sequence"),
    ("command_line_too_long", b"NOOP " + b"x" * 600, b"500 5.5.2", "line_too_long"),
    ("mail_bad_syntax", b"MAIL TO:<a@b.test>", b"501 5.5.4", "syntax"),
    ("mail_unknown_parameter", b"MAIL FROM:<a@b.test> FOO=BAR", b"555 5.5.4", "bad_parameters"),
    ("mail_size_too_big", b"MAIL FROM:<a@b.test> SIZE=99999999999", b"552 5.3.4", "too_large"),
    ("malformed_address", b"MAIL FROM:<a@@b>", b"553 5.1.3", "bad_address"),
]


@pytest.mark.parametrize(
    ("command", "want", "reason"), [c[1:] for c in SMTP_COMMANDS], ids=[c[0] for c in SMTP_COMMANDS]
)
async def test_smtp_command(gateway: Gateway, command: bytes, want: bytes, reason: str) -> None:
    def run() -> bytes:
        w = _smtp_tls(gateway)
        try:
            w.send(command + b"\r\n")
            return w.reply()
        finally:
            w.close()

    await expect_refusal(gateway, "smtp", reason, run, want)


# -- SMTP mails ------------------------------------------------------------------------------
def _mail(subject: str, *, signed_garbage: bool = False) -> bytes:
    head = (
        f"From: alfa@{DOMAIN}\r\nTo: douane-uitvoer@{DOMAIN}\r\nSubject: {subject}\r\n"
        "Message-ID: <hostile@alfa.test>\r\nMIME-Version: 1.0\r\n"
    )
    b = "b0undary"
    if signed_garbage:
        head += (
            'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
            f' micalg=sha-256; boundary="{b}"\r\n\r\n'
        )
        second = (
            "Content-Type: application/pkcs7-signature\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\nMIIBAAAA\r\n"
        )
    else:
        head += f'Content-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
        second = "Content-Type: text/plain\r\n\r\naanlevering\r\n"
    first = (
        'Content-Type: application/xml\r\nContent-Disposition: attachment; filename="d.xml"'
        "\r\n\r\n<a/>\r\n"
    )
    return f"{head}--{b}\r\n{first}--{b}\r\n{second}--{b}--\r\n".encode()


_K41, _K100 = "k" * 41, "k" * 100
# (id, mail, final reply prefix, reason)
SMTP_MAILS = [
    ("k_41_characters", _mail(f"[V={ALFA}][A={DOUANE}][K={_K41}]"), b"554 5.6.0", "bad_subject"),
    ("k_100_characters", _mail(f"[V={ALFA}][A={DOUANE}][K={_K100}]"), b"554 5.6.0", "bad_subject"),
    ("k_unterminated", _mail(f"[V={ALFA}][A={DOUANE}][K=abc"), b"554 5.6.0", "bad_subject"),
    ("a_100_characters", _mail(f"[V={ALFA}][A={'a' * 100}]"), b"554 5.6.0", "bad_subject"),
    ("smime_garbage", _mail(f"[V={ALFA}]", signed_garbage=True), b"550 5.7.7", "smime_invalid"),
]


@pytest.mark.parametrize(
    ("data", "want", "reason"), [c[1:] for c in SMTP_MAILS], ids=[c[0] for c in SMTP_MAILS]
)
async def test_smtp_mail(gateway: Gateway, data: bytes, want: bytes, reason: str) -> None:
    def run() -> bytes:
        with smtplib.SMTP("127.0.0.1", gateway.ports["smtp"], timeout=30) as smtp:
            smtp.starttls(context=gateway.ctx())
            try:
                smtp.sendmail("alfa@x.test", [f"douane-uitvoer@{DOMAIN}"], data)
            except smtplib.SMTPResponseException as exc:
                return f"{exc.smtp_code} ".encode() + exc.smtp_error
            raise AssertionError("accepted")

    await expect_refusal(gateway, "smtp", reason, run, want)


# -- POP3 and FTP lines ----------------------------------------------------------------------
def _smtp(gw: Gateway, line: bytes, *, tls: bool) -> bytes:
    w = _smtp_tls(gw) if tls else Wire(gw.ports["smtp"])
    try:
        if not tls:
            w.reply()
        w.send(line)
        return w.reply()
    finally:
        w.close()


def _pop3(gw: Gateway, line: bytes, *, tls: bool) -> bytes:
    w = Wire(gw.ports["pop3"])
    try:
        w.line()
        if tls:
            w.send(b"STLS\r\n")
            w.line()
            w.tls(gw.ctx())
        w.send(line)
        return w.line()
    finally:
        w.close()


def _ftp(gw: Gateway, line: bytes, *, tls: bool) -> bytes:
    w = Wire(gw.ports["ftp"])
    try:
        w.reply()
        if tls:
            w.send(b"AUTH TLS\r\n")
            w.reply()
            w.tls(gw.ctx())
        w.send(line)
        return w.reply()
    finally:
        w.close()


# (id, conversation, after TLS?, line, reply prefix, reason)
LINES = [
    ("smtp_idle_timeout", _smtp, False, b"", b"421 4.4.2", "timeout"),
    ("smtp_idle_timeout_in_tls", _smtp, True, b"", b"421 4.4.2", "timeout"),
    ("pop3_idle_timeout", _pop3, False, b"", b"-ERR [SYS/TEMP] timeout", "timeout"),
    ("ftp_idle_timeout", _ftp, False, b"", b"421", "timeout"),
    ("pop3_line_too_long", _pop3, False, b"USER " + b"x" * 400 + b"\r\n", b"-ERR", "line_too_long"),
    ("pop3_user_before_stls", _pop3, False, b"USER x\r\n", b"-ERR [SYS/PERM]", "stls_required"),
    ("pop3_not_ascii", _pop3, False, b"US\xffR x\r\n", b"-ERR", "syntax"),
    ("pop3_stls_inside_tls", _pop3, True, b"STLS\r\n", b"-ERR", "stls_twice"),
    ("pop3_retr_before_login", _pop3, True, b"RETR 1\r\n", b"-ERR", "not_allowed"),
    ("ftp_plain_user", _ftp, False, b"USER x\r\n", b"530", "plain_ftp"),
    ("ftp_line_too_long", _ftp, False, b"NOOP " + b"x" * 2000 + b"\r\n", b"500", "line_too_long"),
    ("ftp_auth_inside_tls", _ftp, True, b"AUTH TLS\r\n", b"503", "auth_twice"),
    ("ftp_port_before_login", _ftp, True, b"PORT 127,0,0,1,4,1\r\n", b"530", "not_logged_in"),
    ("ftp_user_mismatch", _ftp, True, b"USER 00000099999999999999\r\n", b"530", "user_mismatch"),
]


@pytest.mark.parametrize(
    ("conversation", "tls", "line", "want", "reason"),
    [c[1:] for c in LINES],
    ids=[c[0] for c in LINES],
)
async def test_line(
    gateway: Gateway,
    conversation: Callable[..., bytes],
    tls: bool,
    line: bytes,
    want: bytes,
    reason: str,
) -> None:
    proto = conversation.__name__.strip("_")
    await expect_refusal(gateway, proto, reason, lambda: conversation(gateway, line, tls=tls), want)


# -- FTP data connections ---------------------------------------------------------------------
def _ftp_passive(gw: Gateway, source: str, connections: int) -> bytes:
    """Log in, PASV, then open ``connections`` data connections from ``source``; returns
    what the last one received (b"" when the server reset it)."""
    w = Wire(gw.ports["ftp"])
    socks: list[socket.socket] = []
    try:
        w.reply()
        w.send(b"AUTH TLS\r\n")
        w.reply()
        w.tls(gw.ctx())
        for line in (f"USER {ALFA}", "PASS x", "PBSZ 0", "PROT P", "EPSV"):
            w.send(line.encode() + b"\r\n")
            reply = w.reply()
        port = int(re.search(rb"\(\|\|\|(\d+)\|\)", reply).group(1))  # type: ignore[union-attr]
        for _ in range(connections):
            socks.append(socket.create_connection(("127.0.0.1", port), 10, (source, 0)))
        try:
            return socks[-1].recv(1)
        except ConnectionError:
            return b""
    finally:
        for sock in socks:
            sock.close()
        w.close()


# (id, source address, connections) - each aborted, logged and counted
DATA_REFUSED = [
    ("foreign_peer", "127.0.0.2", 1, "data_foreign_peer"),
    ("second_connection", "127.0.0.1", 2, "data_second_connection"),
]


@pytest.mark.parametrize(
    ("source", "connections", "reason"),
    [c[1:] for c in DATA_REFUSED],
    ids=[c[0] for c in DATA_REFUSED],
)
async def test_ftp_data_connection_refused(
    gateway: Gateway, source: str, connections: int, reason: str
) -> None:
    await expect_refusal(
        gateway, "ftp", reason, lambda: _ftp_passive(gateway, source, connections), b""
    )


# -- certificates the TLS handshake refuses ---------------------------------------------------
_UPGRADE = {
    "smtp": (b"EHLO x\r\nSTARTTLS\r\n", 2),
    "pop3": (b"STLS\r\n", 0),
    "ftp": (b"AUTH TLS\r\n", 0),
}


def _refused_handshake(gw: Gateway, proto: str, who: str) -> bytes:
    """Upgrade with ``who``'s certificate; returns b"" when the server ended the TLS
    session (at the handshake, or - TLS 1.3 - at the first read after it)."""
    w = Wire(gw.ports[proto])
    try:
        w.line() if proto == "pop3" else w.reply()
        command, replies = _UPGRADE[proto]
        w.send(command)
        for _ in range(replies or 1):
            w.line() if proto == "pop3" else w.reply()
        w.tls(gw.ctx(who))
        w.send(b"NOOP\r\n")
        return w.line()
    except (ssl.SSLError, ConnectionError, EOFError):
        return b""
    finally:
        w.close()


# (id, protocol, certificate) - each must fail the handshake and be logged and counted
TLS_REFUSED = [
    (f"{p}_{who}", p, who) for p in ("smtp", "pop3", "ftp") for who in ("expired", "untrusted")
]


@pytest.mark.parametrize(
    ("proto", "who"), [c[1:] for c in TLS_REFUSED], ids=[c[0] for c in TLS_REFUSED]
)
async def test_tls_handshake_refused(gateway: Gateway, proto: str, who: str) -> None:
    await expect_refusal(
        gateway, proto, "tls_handshake", lambda: _refused_handshake(gateway, proto, who), b""
    )


# -- session caps under a burst ----------------------------------------------------------------
# (protocol, conversation, greeting, refusal line, reason, QUIT's reply)
BURSTS = [
    ("smtp", _smtp, b"220", b"421 4.3.2", "busy", b"221"),
    ("pop3", _pop3, b"+OK", b"-ERR [SYS/TEMP] too many sessions", "busy", b"+OK"),
    ("ftp", _ftp, b"220", b"421", "too_many_sessions", b"221"),
]


@pytest.mark.parametrize(
    ("proto", "conversation", "greeting", "refusal", "reason", "bye"),
    BURSTS,
    ids=[b[0] for b in BURSTS],
)
async def test_session_cap_holds_under_a_burst(
    gateway: Gateway,
    proto: str,
    conversation: Callable[..., bytes],
    greeting: bytes,
    refusal: bytes,
    reason: str,
    bye: bytes,
) -> None:
    """300 simultaneous connects: exactly ``max_sessions`` greetings, the rest refused,
    each refusal counted (SMTP before: 173 greetings with a cap of 100, as the cap was
    decided in the protocol factory, before connection_made)."""
    limit = getattr(gateway.env.settings, proto).max_sessions
    before = await asyncio.to_thread(gateway.refused_total, proto, reason)
    port = gateway.ports[proto]

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    conns = await asyncio.gather(*(connect() for _ in range(300)))
    try:
        firsts = await asyncio.gather(*(asyncio.wait_for(r.readline(), 60) for r, _ in conns))
    finally:
        for _, w in conns:
            w.close()
    ok = sum(g.startswith(greeting) for g in firsts)
    busy = sum(g.startswith(refusal) for g in firsts)
    assert (ok, busy) == (limit, 300 - limit)
    after = await asyncio.to_thread(gateway.refused_total, proto, reason)
    assert after - before == 300 - limit

    async def released() -> bool:  # the closed sessions are given back
        try:
            reply = await asyncio.to_thread(conversation, gateway, b"QUIT\r\n", tls=False)
        except (OSError, EOFError):
            return False
        return reply.startswith(bye)

    await wait_for(released, timeout=30, what=f"a {proto} session after the burst")


# -- the gateway survived all of it ------------------------------------------------------------
async def test_zz_only_structured_log_lines_no_tracebacks(gateway: Gateway) -> None:
    started = time.monotonic()
    assert gateway.proc.poll() is None, "the gateway process died"
    bad = [
        e
        for e in gateway.lines
        if "Traceback" in str(e)
        or (e.get("event") == "<not json>" and not str(e["raw"]).startswith("digipoort serving"))
    ]
    assert not bad, bad[:3]
    assert time.monotonic() - started < 60
    print(f"{len(gateway.lines)} log lines checked", file=sys.stderr)
