"""The FTP command parser and reply formatting: pure functions, no I/O. Also the command
vocabulary: what FEAT announces and which commands are allowed before AUTH TLS / login.

``parse_command`` turns one control-connection line (bytes, CRLF or LF terminated) into a
:class:`Command` or raises :class:`CommandError` carrying the FTP reply code to send.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

#: RFC 959 leaves the line length open; 1024 bytes is plenty for our paths (<= 1000).
MAX_LINE = 1024

#: The command subset this server speaks (RFC 959, 2228, 2389, 2428, 3659, 4217).
KNOWN = frozenset(
    {
        "USER", "PASS", "AUTH", "PBSZ", "PROT", "CCC", "PWD", "XPWD", "CWD", "XCWD", "CDUP",
        "XCUP", "TYPE", "MODE", "STRU", "PASV", "EPSV", "PORT", "EPRT", "LIST", "NLST",
        "MLSD", "MLST", "SIZE", "MDTM", "STOR", "APPE", "REST", "RETR", "DELE", "ALLO",
        "FEAT", "OPTS", "NOOP", "SYST", "QUIT", "ABOR", "STAT", "HELP", "MKD", "RMD",
        "RNFR", "RNTO", "STOU", "ACCT", "REIN", "SITE",
    }
)  # fmt: skip

#: Commands recognised but refused by design (active mode, renames, directories...).
NOT_IMPLEMENTED = frozenset(
    {"PORT", "EPRT", "CCC", "MKD", "RMD", "RNFR", "RNTO", "STOU", "ACCT", "REIN"}
)

#: What FEAT announces.
FEATURES = (
    "AUTH TLS",
    "PBSZ",
    "PROT",
    "EPSV",
    "PASV",
    "SIZE",
    "MDTM",
    "REST STREAM",
    "MLST type*;size*;modify*;",
    "UTF8",
    "TVFS",
)

#: Commands allowed before AUTH TLS, and before login (USER/PASS).
PRE_AUTH = frozenset({"AUTH", "FEAT", "SYST", "NOOP", "QUIT", "HELP"})
PRE_LOGIN = PRE_AUTH | {"PBSZ", "PROT", "USER", "PASS", "OPTS", "TYPE"}

# Telnet "interrupt process" + "data mark", sent by some clients before ABOR (RFC 959 4.1.3)
_TELNET_PREFIXES = (b"\xff\xf4\xff\xf2", b"\xff\xf4", b"\xff\xf2", b"\xf2")


@dataclass(frozen=True)
class Command:
    verb: str
    arg: str = ""


class CommandError(Exception):
    def __init__(self, code: int, message: str, reason: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason  # metric label


def parse_command(line: bytes) -> Command:
    """One control line → Command. Raises CommandError(code, message, reason)."""
    if len(line) > MAX_LINE + 2:
        raise CommandError(500, "Command line too long", "line_too_long")
    if line.endswith(b"\r\n"):
        line = line[:-2]
    elif line.endswith(b"\n"):
        line = line[:-1]
    for prefix in _TELNET_PREFIXES:
        if line.startswith(prefix):
            line = line[len(prefix) :]
            break
    if len(line) > MAX_LINE:
        raise CommandError(500, "Command line too long", "line_too_long")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandError(501, "Command is not valid UTF-8", "bad_encoding") from None
    if any(_is_control(ch) for ch in text):
        raise CommandError(501, "Control characters are not allowed", "bad_encoding")
    verb, _, arg = text.partition(" ")
    if not (3 <= len(verb) <= 4 and verb.isascii() and verb.isalpha()):
        raise CommandError(500, "Syntax error, command unrecognized", "bad_command")
    verb = verb.upper()
    if verb not in KNOWN:
        raise CommandError(502, f"{verb} not implemented", "unknown_command")
    return Command(verb, arg)


def _is_control(ch: str) -> bool:
    # Cc: NUL, CR, LF, DEL...; Cf: bidi overrides, zero-width characters; Cs: surrogates
    return unicodedata.category(ch) in ("Cc", "Cf", "Cs")


def reply(code: int, text: str) -> bytes:
    """A reply; multi-line text uses the RFC 959 ``code-`` continuation form."""
    lines = [_printable(line) for line in text.split("\n")] or [""]
    if len(lines) == 1:
        return f"{code} {lines[0]}\r\n".encode()
    out = [f"{code}-{lines[0]}"]
    out += [f" {line}" for line in lines[1:-1]]
    out.append(f"{code} {lines[-1]}")
    return ("\r\n".join(out) + "\r\n").encode()


def _printable(text: str) -> str:
    return "".join(ch if not _is_control(ch) else "?" for ch in text)


def parse_type(arg: str) -> str | None:
    """TYPE argument → "A" or "I" (A N / L 8 accepted); None when unsupported."""
    parts = arg.upper().split()
    if parts in (["A"], ["A", "N"]):
        return "A"
    if parts in (["I"], ["L", "8"]):
        return "I"
    return None


def parse_rest(arg: str) -> int | None:
    """REST argument → a byte offset (decimal, >= 0, < 2**63); None when invalid."""
    if not arg or not arg.isascii() or not arg.isdigit() or len(arg) > 18:
        return None
    return int(arg)


def parse_allo(arg: str) -> int | None:
    """ALLO <size> [R <record>] → the announced size; None when invalid."""
    first = arg.split(" ", 1)[0]
    return parse_rest(first)


def pasv_reply(host: str, port: int) -> bytes:
    h = host.replace(".", ",")
    return reply(227, f"Entering Passive Mode ({h},{port >> 8},{port & 0xFF})")


def epsv_reply(port: int) -> bytes:
    return reply(229, f"Entering Extended Passive Mode (|||{port}|)")
