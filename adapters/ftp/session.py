"""One FTP control connection: the state machine of explicit FTPS (RFC 4217) and the
commands of the account (``/in/<berichtsoort>/`` uploads, ``/out/`` downloads).

Order enforced: ``AUTH TLS`` before anything else (plain FTP gets 530), then the client
certificate is verified (chain, validity, CRL) and gives the OIN; ``USER`` must equal it
(``PASS`` is not checked); ``PBSZ 0`` + ``PROT P`` before any data connection (``PROT C``
gets 534). Every refusal: reply code + structlog line + ``digipoort_ftp_refused_total``.

This module is the connection's main loop, the command dispatch and the login; the other
commands live by job in :mod:`adapters.ftp.files` (listings, RETR, DELE),
:mod:`adapters.ftp.upload` (STOR/APPE) and :mod:`adapters.ftp.datachannel` (PASV/EPSV,
transfers); the shared state in :mod:`adapters.ftp.sessionbase`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from adapters.ftp import metrics
from adapters.ftp.commands import (
    FEATURES,
    NOT_IMPLEMENTED,
    PRE_AUTH,
    PRE_LOGIN,
    CommandError,
    parse_command,
    parse_rest,
    parse_type,
)
from adapters.ftp.files import FileCommands
from adapters.ftp.upload import UploadCommands
from adapters.starttls import upgrade
from digipoort.pki import CertificateRejected, peer_certificate

__all__ = ["Session"]


class Session(FileCommands, UploadCommands):
    """One control connection: main loop, dispatch, AUTH/PBSZ/PROT/USER/PASS, simple commands."""

    # -- main loop -------------------------------------------------------------------------
    async def run(self) -> None:
        outcome = "closed"
        try:
            await self.send(220, "Digipoort FTPS: AUTH TLS required, client certificate required")
            while not self.closing:
                try:
                    async with asyncio.timeout(self.s.config.timeout_seconds):
                        line = await self.reader.readuntil(b"\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                except asyncio.LimitOverrunError:
                    await self.refuse(500, "Command line too long", "line_too_long")
                    break
                except TimeoutError:
                    if self.transfer is not None and not self.transfer.done():
                        continue
                    await self.refuse(421, "Timeout, closing control connection", "timeout")
                    break
                await self.dispatch(line)
            if self.logged_in:
                outcome = "authenticated"
        except (ssl.SSLError, ConnectionError) as exc:
            outcome = "error"
            self.log.info("ftp.connection_error", error=repr(exc))
        finally:
            await self.cleanup()
            metrics.SESSIONS.labels(outcome if self.oin else "unauthenticated").inc()

    async def cleanup(self) -> None:
        if self.transfer is not None and not self.transfer.done():
            self.transfer.cancel()
            with contextlib.suppress(BaseException):
                await self.transfer
        if self.listener is not None:
            self.listener.close()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def dispatch(self, line: bytes) -> None:
        try:
            cmd = parse_command(line)
        except CommandError as exc:
            await self.refuse(exc.code, exc.message, exc.reason)
            return
        verb, arg = cmd.verb, cmd.arg
        if self.transfer is not None and not self.transfer.done():
            if verb == "ABOR":
                await self.abort_transfer()
            elif verb == "QUIT":
                await self.abort_transfer()
                await self.send(221, "Goodbye")
                self.closing = True
            elif verb == "NOOP":
                await self.send(200, "NOOP ok")
            else:
                await self.refuse(503, "Transfer in progress", "busy")
            return
        if not self.tls and verb not in PRE_AUTH:
            await self.refuse(530, "Plain FTP refused: use AUTH TLS first", "plain_ftp", verb=verb)
            return
        if not self.logged_in and verb not in PRE_LOGIN:
            await self.refuse(530, "Not logged in", "not_logged_in", verb=verb)
            return
        if verb in NOT_IMPLEMENTED:
            await self.refuse(502, f"{verb} not implemented", "not_implemented")
            return
        handler: Callable[[str], Awaitable[None]] = getattr(self, f"cmd_{verb}")
        await handler(arg)

    # -- security: AUTH, PBSZ, PROT, USER, PASS -----------------------------------------
    async def cmd_AUTH(self, arg: str) -> None:
        if self.tls:
            await self.refuse(503, "TLS already active", "auth_twice")
            return
        if arg.upper() not in ("TLS", "TLS-C", "SSL"):
            await self.refuse(504, "Only AUTH TLS is supported", "auth_mechanism")
            return
        try:
            discarded = await upgrade(
                self.reader,
                self.writer,
                self.s.ssl_context,
                lambda: self.send(234, "AUTH TLS ok, start the TLS handshake"),
            )
        except (ssl.SSLError, ConnectionError, TimeoutError, OSError) as exc:
            metrics.REFUSED.labels("tls_handshake").inc()
            self.log.info("ftp.refused", code=0, reason="tls_handshake", error=repr(exc)[:200])
            self.closing = True
            return
        if discarded:  # CVE-2011-0411: plaintext pipelined behind AUTH TLS is never run
            metrics.REFUSED.labels("pipelined_before_tls").inc()
            self.log.warning(
                "ftp.refused", code=0, reason="pipelined_before_tls", discarded=discarded
            )
        self.tls = True
        sslobj = self.writer.get_extra_info("ssl_object")
        cert = peer_certificate(sslobj) if sslobj is not None else None
        if cert is None:
            self.cert_problem = "no_certificate"
            return
        try:
            self.cert_oin = self.s.verifier.verify(cert).oin
            self.cert_problem = None
        except CertificateRejected as exc:
            self.cert_problem = f"certificate_{exc.reason}"

    async def cmd_PBSZ(self, arg: str) -> None:
        self.pbsz = True
        await self.send(200, "PBSZ=0")

    async def cmd_PROT(self, arg: str) -> None:
        level = arg.strip().upper()
        if not self.pbsz:
            await self.refuse(503, "PBSZ 0 first", "prot_before_pbsz")
        elif level == "P":
            self.prot_p = True
            await self.send(200, "Protection level set to Private")
        elif level == "C":
            await self.refuse(534, "PROT C refused: data connections must be protected", "prot_c")
        elif level in ("S", "E"):
            await self.refuse(536, f"PROT {level} not supported", "prot_unsupported")
        else:
            await self.refuse(504, "Unknown protection level", "prot_unsupported")

    async def cmd_USER(self, arg: str) -> None:
        if self.logged_in:
            await self.refuse(503, "Already logged in", "user_twice")
            return
        if self.cert_problem is not None:
            await self.refuse(
                530,
                "Client certificate required and not accepted: " + self.cert_problem,
                self.cert_problem,
            )
            return
        if arg != self.cert_oin:
            await self.refuse(
                530,
                "USER must be the OIN of your client certificate",
                "user_mismatch",
                user=arg[:40],
            )
            return
        self.user_ok = True
        await self.send(331, "OIN matches the certificate; any password")

    async def cmd_PASS(self, arg: str) -> None:  # the password is never logged
        if not self.user_ok:
            await self.refuse(503, "Login with USER first", "pass_before_user")
            return
        self.oin = self.cert_oin
        self.log = self.log.bind(sender_oin=self.oin)
        metrics.SESSIONS.labels("login").inc()
        area = self.area()
        expired = await asyncio.to_thread(area.expire, self.s.config.partial_ttl_seconds)
        if expired:
            metrics.PARTIALS_EXPIRED.inc(expired)
        self.log.info("ftp.login")
        await self.send(230, f"Logged in as {self.oin}")

    # -- simple commands -------------------------------------------------------------------
    async def cmd_FEAT(self, arg: str) -> None:
        await self.send(211, "Features:\n" + "\n".join(FEATURES) + "\nEnd")

    async def cmd_OPTS(self, arg: str) -> None:
        if arg.upper() in ("UTF8 ON", "UTF8") or arg.upper().startswith("MLST"):
            await self.send(200, "OK")
        else:
            await self.refuse(501, "Option not supported", "opts")

    async def cmd_SYST(self, arg: str) -> None:
        await self.send(215, "UNIX Type: L8")

    async def cmd_NOOP(self, arg: str) -> None:
        await self.send(200, "NOOP ok")

    async def cmd_HELP(self, arg: str) -> None:
        await self.send(214, "See docs/ftp.md")

    async def cmd_STAT(self, arg: str) -> None:
        await self.send(211, f"Logged in as {self.oin}; cwd {self.cwd}")

    async def cmd_QUIT(self, arg: str) -> None:
        await self.send(221, "Goodbye")
        self.closing = True

    async def cmd_ABOR(self, arg: str) -> None:
        await self.send(226, "No transfer to abort")

    async def cmd_TYPE(self, arg: str) -> None:
        t = parse_type(arg)
        if t is None:
            await self.refuse(504, "TYPE not supported", "type")
        else:
            await self.send(200, f"Type set to {t}")

    async def cmd_MODE(self, arg: str) -> None:
        if arg.upper() == "S":
            await self.send(200, "Mode S")
        else:
            await self.refuse(504, "Only MODE S", "mode")

    async def cmd_STRU(self, arg: str) -> None:
        if arg.upper() == "F":
            await self.send(200, "Structure F")
        else:
            await self.refuse(504, "Only STRU F", "stru")

    async def cmd_PWD(self, arg: str) -> None:
        await self.send(257, '"' + self.cwd.replace('"', '""') + '" is the current directory')

    cmd_XPWD = cmd_PWD

    async def cmd_CWD(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        if not node.is_dir:
            await self.refuse(550, "No such directory", "no_such_directory")
            return
        self.cwd = path
        await self.send(250, f"Directory changed to {path}")

    cmd_XCWD = cmd_CWD

    async def cmd_CDUP(self, arg: str) -> None:
        await self.cmd_CWD("..")

    cmd_XCUP = cmd_CDUP

    async def cmd_REST(self, arg: str) -> None:
        offset = parse_rest(arg)
        if offset is None:
            await self.refuse(501, "REST needs a byte offset", "rest_invalid")
            return
        self.rest = offset
        await self.send(350, f"Restarting at {offset}; send STOR, APPE or RETR")
