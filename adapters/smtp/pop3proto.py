"""POP3 (RFC 1939, with STLS from RFC 2595 and CAPA/RESP-CODES from RFC 2449) as a pure
state machine: lines in, replies and actions out. No I/O: the asyncio shell
(:mod:`adapters.smtp.pop3server`) performs the actions (TLS, login, fetch, delete) and
reports back. STLS is required before USER/PASS.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_LINE",
    "Authenticate",
    "Command",
    "CommandError",
    "Entry",
    "Pop3Session",
    "Quit",
    "Reply",
    "Retrieve",
    "StartTls",
    "dot_stuff",
    "parse_command",
    "top",
]

MAX_LINE = 255  # octets including CRLF (RFC 2449)
MAX_ARG = 40
MAX_ERRORS = 10
MAX_LOGIN_FAILURES = 3
_NAME = re.compile(r"[A-Za-z]{3,4}")


class CommandError(Exception):
    """A line that is not a POP3 command."""


@dataclass(frozen=True)
class Command:
    name: str
    args: tuple[str, ...] = ()
    rest: str = ""  # the text after the keyword, for PASS (may contain spaces)


def parse_command(line: bytes) -> Command:
    """Parse one command line (with or without CRLF). Raises CommandError."""
    if len(line) > MAX_LINE:
        raise CommandError("line too long")
    body = line[:-2] if line.endswith(b"\r\n") else line.rstrip(b"\n")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise CommandError("non-ASCII command") from None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise CommandError("control characters in command")
    name, _, rest = text.partition(" ")
    if not _NAME.fullmatch(name):
        raise CommandError("bad keyword")
    args = tuple(rest.split(" ")) if rest else ()
    if name.upper() != "PASS" and any(len(a) > MAX_ARG or not a for a in args):
        raise CommandError("bad argument")
    return Command(name.upper(), args, rest)


@dataclass(frozen=True)
class Entry:
    """A message in the maildrop: database id, unique id (UIDL), size in octets."""

    id: int
    uid: str
    size: int


@dataclass(frozen=True)
class Reply:
    ok: bool
    text: str
    lines: tuple[str, ...] | None = None  # a multi-line answer (terminated by ".")
    close: bool = False
    reason: str | None = None  # for -ERR: a short machine reason (metrics, logs)

    def render(self) -> bytes:
        head = f"{'+OK' if self.ok else '-ERR'} {self.text}".rstrip() + "\r\n"
        if self.lines is None:
            return head.encode("ascii", "replace")
        body = "".join(("." + x if x.startswith(".") else x) + "\r\n" for x in self.lines)
        return (head + body + ".\r\n").encode("ascii", "replace")


def _err(text: str, reason: str, *, close: bool = False) -> Reply:
    return Reply(False, text, close=close, reason=reason)


@dataclass(frozen=True)
class StartTls:
    """Send ``reply``, then start TLS on the connection; call ``tls_started``."""

    reply: Reply


@dataclass(frozen=True)
class Authenticate:
    """Check the login: ``password`` None means the certificate already proved ``user``."""

    user: str
    password: str | None


@dataclass(frozen=True)
class Retrieve:
    """Send ``+OK``, then the message (all of it, or its header and ``lines`` lines)."""

    entry: Entry
    lines: int | None = None


@dataclass(frozen=True)
class Quit:
    """Remove ``deleted`` (UPDATE state), then reply and close."""

    deleted: tuple[Entry, ...]


Action = Reply | StartTls | Authenticate | Retrieve | Quit


@dataclass
class Pop3Session:
    """One POP3 session's state. ``handle`` every parsed command."""

    implementation: str = "Digipoort"
    tls: bool = False
    cert_oin: str | None = None  # the verified client certificate's OIN
    cert_error: str | None = None  # why a presented certificate was rejected
    state: str = "authorization"  # authorization | transaction | closed
    user: str | None = None
    entries: list[Entry] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)  # indexes into entries
    errors: int = 0
    login_failures: int = 0

    def greeting(self) -> Reply:
        return Reply(True, f"{self.implementation} POP3 server ready")

    # -- callbacks from the shell -----------------------------------------------------------
    def tls_started(self, cert_oin: str | None, cert_error: str | None = None) -> None:
        self.tls = True
        self.cert_oin = cert_oin
        self.cert_error = cert_error
        self.user = None

    def logged_in(self, entries: Sequence[Entry]) -> Reply:
        self.state = "transaction"
        self.entries = list(entries)
        self.deleted = set()
        n, size = self._stat()
        return Reply(True, f"{self.user} has {n} messages ({size} octets)")

    def login_failed(self, text: str = "[AUTH] authentication failed") -> Reply:
        self.user = None
        self.login_failures += 1
        close = self.login_failures >= MAX_LOGIN_FAILURES
        return _err(text, "auth_failed", close=close)

    def error(self, text: str, reason: str) -> Reply:
        """A -ERR for an invalid line; closes after too many."""
        self.errors += 1
        return _err(text, reason, close=self.errors >= MAX_ERRORS)

    # -- commands --------------------------------------------------------------------------
    def handle(self, cmd: Command) -> Action:
        if self.state == "closed":
            return _err("session closed", "closed", close=True)
        name = cmd.name
        if name == "CAPA":
            return Reply(True, "Capability list follows", self._capabilities())
        if name == "QUIT":
            if self.state == "transaction":
                self.state = "closed"
                return Quit(tuple(self.entries[i] for i in sorted(self.deleted)))
            self.state = "closed"
            return Reply(True, "bye", close=True)
        if name == "NOOP":
            return Reply(True, "")
        if self.state == "authorization":
            return self._authorization(cmd)
        return self._transaction(cmd)

    def _capabilities(self) -> tuple[str, ...]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.state == "authorization":
            caps.append("USER" if self.tls else "STLS")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        return tuple(caps)

    def _authorization(self, cmd: Command) -> Action:
        if cmd.name == "STLS":
            if self.tls:
                return self.error("TLS already active", "stls_twice")
            if cmd.args:
                return self.error("STLS takes no argument", "syntax")
            return StartTls(Reply(True, "Begin TLS negotiation"))
        if cmd.name in ("USER", "PASS", "APOP", "AUTH") and not self.tls:
            return self.error("[SYS/PERM] STLS required before authentication", "stls_required")
        if cmd.name == "USER":
            if len(cmd.args) != 1:
                return self.error("USER takes one argument", "syntax")
            self.user = cmd.args[0]
            return Reply(True, "send PASS")
        if cmd.name == "PASS":
            if self.user is None:
                return self.error("USER first", "sequence")
            if self.cert_error is not None:
                return self.login_failed(f"[AUTH] client certificate rejected: {self.cert_error}")
            if self.cert_oin is not None:
                if self.user != self.cert_oin:
                    return self.login_failed("[AUTH] certificate does not belong to this mailbox")
                return Authenticate(self.user, None)
            if not cmd.rest:
                return self.login_failed()
            return Authenticate(self.user, cmd.rest)
        return self.error(f"{cmd.name} not allowed now", "not_allowed")

    def _stat(self) -> tuple[int, int]:
        live = [e for i, e in enumerate(self.entries) if i not in self.deleted]
        return len(live), sum(e.size for e in live)

    def _message(self, arg: str) -> tuple[int, Entry] | Reply:
        if not arg.isdigit() or len(arg) > 10:
            return self.error("invalid message number", "syntax")
        n = int(arg)
        if not 1 <= n <= len(self.entries):
            return self.error("no such message", "no_such_message")
        if n - 1 in self.deleted:
            return self.error(f"message {n} already deleted", "deleted")
        return n, self.entries[n - 1]

    def _transaction(self, cmd: Command) -> Action:
        name, args = cmd.name, cmd.args
        if name == "STAT" and not args:
            n, size = self._stat()
            return Reply(True, f"{n} {size}")
        if name in ("LIST", "UIDL") and len(args) <= 1:

            def show(n: int, e: Entry) -> str:
                return f"{n} {e.size if name == 'LIST' else e.uid}"

            if args:
                found = self._message(args[0])
                return found if isinstance(found, Reply) else Reply(True, show(*found))
            n, size = self._stat()
            listing = tuple(
                show(i + 1, e) for i, e in enumerate(self.entries) if i not in self.deleted
            )
            return Reply(True, f"{n} messages ({size} octets)", listing)
        if name == "RETR" and len(args) == 1:
            found = self._message(args[0])
            return found if isinstance(found, Reply) else Retrieve(found[1])
        if name == "TOP" and len(args) == 2:
            found = self._message(args[0])
            if isinstance(found, Reply):
                return found
            if not args[1].isdigit() or len(args[1]) > 9:
                return self.error("invalid line count", "syntax")
            return Retrieve(found[1], int(args[1]))
        if name == "DELE" and len(args) == 1:
            found = self._message(args[0])
            if isinstance(found, Reply):
                return found
            self.deleted.add(found[0] - 1)
            return Reply(True, f"message {found[0]} deleted")
        if name == "RSET" and not args:
            self.deleted.clear()
            n, size = self._stat()
            return Reply(True, f"maildrop has {n} messages ({size} octets)")
        if name in ("STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET"):
            return self.error(f"{name}: wrong number of arguments", "syntax")
        return self.error(f"{name} not allowed now", "not_allowed")


def dot_stuff(message: bytes) -> bytes:
    """The message as a multi-line POP3 answer body: CRLF lines, leading dots doubled,
    ending in CRLF (the terminating ``.`` line is added by the caller)."""
    data = re.sub(rb"\r?\n", b"\r\n", message)
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


def top(message: bytes, lines: int) -> bytes:
    """The header, the blank line and the first ``lines`` lines of the body."""
    data = re.sub(rb"\r?\n", b"\r\n", message)
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return data
    body_lines = body.split(b"\r\n")[:lines] if lines else []
    return head + b"\r\n\r\n" + b"\r\n".join(body_lines)
