"""POP3 mailboxes: the pure state machine (and a hypothesis fuzz of its parser), and the
server over real TLS with poplib."""

from __future__ import annotations

import asyncio
import poplib
import ssl
import uuid

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.smtp.passwords import hash_password, verify_password
from adapters.smtp.pop3proto import (
    Authenticate,
    Command,
    CommandError,
    Entry,
    Pop3Session,
    Quit,
    Reply,
    Retrieve,
    StartTls,
    dot_stuff,
    parse_command,
    top,
)
from digipoort.envelope import new_kenmerk
from digipoort.pki import client_ssl_context
from tests.support import ALFA, BETA, Env

# -- pure ------------------------------------------------------------------------------


def test_state_machine_flow() -> None:
    s = Pop3Session()
    assert s.greeting().ok
    r = s.handle(parse_command(b"USER x\r\n"))
    assert isinstance(r, Reply) and not r.ok and "STLS required" in r.text
    assert isinstance(s.handle(parse_command(b"STLS\r\n")), StartTls)
    s.tls_started(ALFA)
    assert isinstance(s.handle(parse_command(b"USER " + BETA.encode())), Reply)
    r = s.handle(parse_command(b"PASS anything"))
    assert isinstance(r, Reply) and not r.ok and "[AUTH]" in r.text
    s.handle(parse_command(b"USER " + ALFA.encode()))
    assert s.handle(parse_command(b"PASS x")) == Authenticate(ALFA, None)
    s.logged_in([Entry(7, "u7", 10), Entry(9, "u9", 20)])
    assert s.handle(parse_command(b"STAT")) == Reply(True, "2 30")
    uidl = s.handle(parse_command(b"UIDL"))
    assert isinstance(uidl, Reply) and uidl.lines == ("1 u7", "2 u9")
    assert s.handle(parse_command(b"RETR 2")) == Retrieve(Entry(9, "u9", 20))
    assert s.handle(parse_command(b"TOP 1 0")) == Retrieve(Entry(7, "u7", 10), 0)
    assert s.handle(parse_command(b"DELE 1")).ok  # type: ignore[union-attr]
    r = s.handle(parse_command(b"RETR 1"))
    assert isinstance(r, Reply) and not r.ok
    assert s.handle(parse_command(b"RSET")).ok  # type: ignore[union-attr]
    s.handle(parse_command(b"DELE 2"))
    assert s.handle(parse_command(b"QUIT")) == Quit((Entry(9, "u9", 20),))


def test_password_login_and_lockout() -> None:
    s = Pop3Session(tls=True)
    for i in range(3):
        s.handle(Command("USER", (ALFA,)))
        assert s.handle(Command("PASS", ("pw word",), "pw word")) == Authenticate(ALFA, "pw word")
        r = s.login_failed()
        assert r.close == (i == 2)


def test_rendering() -> None:
    assert Reply(True, "x", (".a", "b")).render() == b"+OK x\r\n..a\r\nb\r\n.\r\n"
    assert dot_stuff(b".x\n.y\r\nz") == b"..x\r\n..y\r\nz\r\n"
    assert top(b"H: 1\r\n\r\nl1\r\nl2\r\n", 1) == b"H: 1\r\n\r\nl1"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_command_parser_and_state_machine(line: bytes) -> None:
    session = Pop3Session(tls=True, cert_oin=ALFA)
    for state in ("authorization", "transaction"):
        session.state = state
        session.entries = [Entry(1, "u1", 5)]
        try:
            cmd = parse_command(line)
        except CommandError:
            continue
        assert len(line) <= 255
        action = session.handle(cmd)
        assert isinstance(action, Reply | StartTls | Authenticate | Retrieve | Quit)
        if isinstance(action, Reply):
            rendered = action.render()
            assert (rendered.endswith(b"\r\n") and b"\r\n" not in rendered[:-2]) or action.lines


@settings(max_examples=20, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_passwords_hash_round_trip(pw: str) -> None:
    hashed = hash_password(pw)
    assert hashed.startswith("scrypt$") and len(hashed.split("$")) == 6
    assert verify_password(pw, hashed)
    assert not verify_password(pw + "x", hashed)


# -- over the wire ---------------------------------------------------------------------

COMPONENTS = ("intake", "pop3")


def _ctx(env: Env, who: str | None) -> ssl.SSLContext:
    pki = env.dir / "pki"
    if who is None:
        return ssl.create_default_context(cafile=str(pki / "ca.crt"))
    return client_ssl_context(pki / f"{who}.crt", pki / f"{who}.key", pki / "ca.crt")


async def _put(env: Env, owner: str, n: int) -> None:
    conn = await env.conn()
    for i in range(n):
        await conn.execute(
            # kenmerk is NOT NULL since migration 017 (the month partition key)
            "INSERT INTO pop3_mailbox (owner_oin, uid, kenmerk, message) VALUES ($1, $2, $3, $4)",
            owner,
            uuid.uuid4().hex,
            new_kenmerk(),
            f"Subject: test {i}\r\n\r\n.line {i}\r\nbody\r\n".encode(),
        )


def _login(env: Env, who: str | None, user: str, password: str = "x") -> poplib.POP3:  # noqa: S107
    box = poplib.POP3("127.0.0.1", env.settings.pop3.port, timeout=30)
    box.stls(context=_ctx(env, who))
    box.user(user)
    box.pass_(password)
    return box


async def test_pop3_stls_required_and_certificate_must_match(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)

    def no_tls() -> bytes:
        box = poplib.POP3("127.0.0.1", env.settings.pop3.port, timeout=30)
        try:
            assert "STLS" in box.capa()
            with pytest.raises(poplib.error_proto) as exc:
                box.user(ALFA)
            return bytes(exc.value.args[0])
        finally:
            box.quit()

    assert b"STLS required" in await asyncio.to_thread(no_tls)

    def wrong_user() -> bytes:
        with pytest.raises(poplib.error_proto) as exc:
            _login(env, ALFA, BETA)
        return bytes(exc.value.args[0])

    assert b"[AUTH]" in await asyncio.to_thread(wrong_user)

    def revoked() -> bytes:
        with pytest.raises(poplib.error_proto) as exc:
            _login(env, "revoked", ALFA)
        return bytes(exc.value.args[0])

    assert b"revoked" in await asyncio.to_thread(revoked)


async def test_pop3_password_login_set_by_cli(env: Env) -> None:
    from adapters.smtp.cli import participants

    await env.start_gateway(components=COMPONENTS)
    await _put(env, BETA, 1)
    result = await asyncio.to_thread(
        CliRunner().invoke,
        participants,
        ["password", BETA, "--config", str(env.config_path), "--password-stdin"],
        input="correct horse battery\n",
    )
    assert result.exit_code == 0, result.output
    stored = await (await env.conn()).fetchval(
        "SELECT hash FROM participant_passwords WHERE oin = $1", BETA
    )
    assert "correct horse" not in stored and stored.startswith("scrypt$")

    def bad() -> None:
        with pytest.raises(poplib.error_proto):
            _login(env, None, BETA, "wrong password!")

    await asyncio.to_thread(bad)

    def good() -> int:
        box = _login(env, None, BETA, "correct horse battery")
        try:
            return int(box.stat()[0])
        finally:
            box.quit()

    assert await asyncio.to_thread(good) == 1


async def test_pop3_uidl_stable_and_dele_persists_across_restart(env: Env) -> None:
    await env.start_gateway(components=COMPONENTS)
    await _put(env, ALFA, 3)
    await _put(env, BETA, 1)

    def session(dele: int | None = None) -> tuple[list[bytes], list[bytes]]:
        box = _login(env, ALFA, ALFA)
        try:
            uidl = box.uidl()[1]
            lines = box.retr(1)[1]
            top_lines = box.top(1, 0)[1]
            assert top_lines[-1] == b""
            if dele:
                box.dele(dele)
            return uidl, lines
        finally:
            box.quit()

    first, lines = await asyncio.to_thread(session)
    assert len(first) == 3 and lines[-2] == b".line 0"  # dot-unstuffed by poplib
    again, _ = await asyncio.to_thread(session, 2)
    assert again == first
    for gw in list(env.gateways):
        await gw.stop()
    env.gateways.clear()
    await env.start_gateway(components=COMPONENTS)
    after, _ = await asyncio.to_thread(session)
    uids = [u.split()[1] for u in first]
    assert [u.split()[1] for u in after] == [uids[0], uids[2]]
    assert (
        await (await env.conn()).fetchval(
            "SELECT count(*) FROM pop3_mailbox WHERE owner_oin = $1", BETA
        )
        == 1
    )
