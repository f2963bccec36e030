"""One FTP control connection: the state machine of explicit FTPS (RFC 4217) and the
commands of the account (``/in/<berichtsoort>/`` uploads, ``/out/`` downloads).

Order enforced: ``AUTH TLS`` before anything else (plain FTP gets 530), then the client
certificate is verified (chain, validity, CRL) and gives the OIN; ``USER`` must equal it
(``PASS`` is not checked); ``PBSZ 0`` + ``PROT P`` before any data connection (``PROT C``
gets 534). Every refusal: reply code + structlog line + ``digipoort_ftp_refused_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from adapters.ftp import metrics
from adapters.ftp.commands import (
    NOT_IMPLEMENTED,
    CommandError,
    epsv_reply,
    parse_allo,
    parse_command,
    parse_rest,
    parse_type,
    pasv_reply,
    reply,
)
from adapters.ftp.partials import LimitExceeded, PartialArea, Upload, promote
from adapters.ftp.passive import DataConnectionError, DataListener, PassivePorts, close_quietly
from adapters.ftp.paths import (
    SNIFF_BYTES,
    Node,
    PathRefused,
    check_upload_name,
    classify,
    mime_type_for,
    parse_mime_type,
)
from adapters.ftp.paths import normalise as normalise_path
from adapters.ftp.tlsstream import TlsStream, Truncated
from adapters.starttls import upgrade
from digipoort.archive import Recorder, disabled
from digipoort.config import FtpConfig, GroteBerichtenConfig, LimitsConfig
from digipoort.envelope import Aanlevering, Document, Identiteit, StoredBlob
from digipoort.intake import Intake, IntakeRefused, IntakeUnavailable
from digipoort.payloads import PayloadStore
from digipoort.pki import CertificateRejected, CertificateVerifier, peer_certificate
from digipoort.pki.trust import oin_from_certificate
from digipoort.registry_store import RegistryHolder
from routing.afleveren.ftp import Outbox

log = structlog.get_logger(__name__)

READ_CHUNK = 256 * 1024
DATA_ACCEPT_TIMEOUT = 30.0

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

PRE_AUTH = frozenset({"AUTH", "FEAT", "SYST", "NOOP", "QUIT", "HELP"})
PRE_LOGIN = PRE_AUTH | {"PBSZ", "PROT", "USER", "PASS", "OPTS", "TYPE"}


@dataclass
class FtpShared:
    """What every session of one server shares."""

    config: FtpConfig
    limits: LimitsConfig
    ssl_context: ssl.SSLContext
    verifier: CertificateVerifier
    registry: RegistryHolder
    intake: Intake
    pool: asyncpg.Pool
    store: PayloadStore
    root: Path
    ports: PassivePorts
    grote_berichten: GroteBerichtenConfig
    public_url: str  # where Grote Berichten references point (the WUS HTTPS port)
    busy: set[tuple[str, str]] = field(default_factory=set)
    archive: Recorder = field(default_factory=disabled)  # docs/archive.md


class Session:
    def __init__(
        self, shared: FtpShared, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.s = shared
        self.reader = reader
        self.writer = writer
        peer = writer.get_extra_info("peername") or ("?", 0)
        self.peer_ip: str = peer[0]
        self.log = log.bind(koppelvlak="ftp", peer=self.peer_ip)
        self.tls = False
        self.pbsz = False
        self.prot_p = False
        self.cert_oin: str | None = None
        self.cert_problem: str | None = "no_certificate"
        self.user_ok = False
        self.oin: str | None = None
        self.cwd = "/"
        self.rest: int | None = None
        self.allo: int | None = None
        self.mime: str | None = None  # SITE MIME: the MIME type of the next upload
        self.listener: DataListener | None = None
        self.transfer: asyncio.Task[None] | None = None
        self.closing = False

    # -- plumbing --------------------------------------------------------------------------
    async def send(self, code: int, text: str) -> None:
        self.writer.write(reply(code, text))
        await self.writer.drain()

    async def refuse(self, code: int, text: str, reason: str, **kw: Any) -> None:
        metrics.REFUSED.labels(reason).inc()
        self.log.info("ftp.refused", code=code, reason=reason, **kw)
        await self.send(code, text)

    @property
    def logged_in(self) -> bool:
        return self.oin is not None

    def soorten(self) -> set[str]:
        assert self.oin is not None
        return set(self.s.registry.current.berichtsoorten_for_sender(self.oin, "ftp"))

    def area(self) -> PartialArea:
        assert self.oin is not None
        return PartialArea(self.s.root, self.oin)

    def outbox(self) -> Outbox:
        assert self.oin is not None
        return Outbox(
            self.s.pool,
            self.s.store,
            self.oin,
            grote_berichten=self.s.grote_berichten,
            public_url=self.s.public_url,
        )

    async def resolve(self, arg: str) -> tuple[str, Node] | None:
        try:
            path = normalise_path(self.cwd, arg or ".")
        except PathRefused as exc:
            await self.refuse(553, exc.message, exc.reason, path=arg[:100])
            return None
        return path, classify(path, self.soorten())

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

    async def cmd_SITE(self, arg: str) -> None:
        sub, _, value = arg.partition(" ")
        if sub.upper() != "MIME":
            await self.refuse(504, "Only SITE MIME <type/subtype> is supported", "site_unsupported")
            return
        mime = parse_mime_type(value)
        if mime is None:
            await self.refuse(501, "SITE MIME needs type/subtype, e.g. text/xml", "mime_invalid")
            return
        self.mime = mime
        await self.send(200, f"MIME type of the next upload: {mime}")

    async def cmd_ALLO(self, arg: str) -> None:
        size = parse_allo(arg)
        if size is None:
            await self.refuse(501, "ALLO needs a size", "allo_invalid")
            return
        self.allo = size
        await self.send(200, f"ALLO {size} noted; the upload must have exactly this size")

    # -- passive mode ----------------------------------------------------------------------
    async def _open_passive(self) -> DataListener | None:
        if not self.prot_p:
            await self.refuse(521, "PBSZ 0 and PROT P required first", "prot_not_p")
            return None
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        try:
            self.listener = await self.s.ports.open(self.peer_ip, self.s.ssl_context, 30.0)
        except DataConnectionError as exc:
            await self.refuse(425, "No passive port available", exc.reason)
            return None
        return self.listener

    async def cmd_PASV(self, arg: str) -> None:
        listener = await self._open_passive()
        if listener is not None:
            self.writer.write(pasv_reply(self.s.config.public_host, listener.port))
            await self.writer.drain()

    async def cmd_EPSV(self, arg: str) -> None:
        if arg.upper() == "ALL":
            await self.send(200, "EPSV ALL ok")
            return
        listener = await self._open_passive()
        if listener is not None:
            self.writer.write(epsv_reply(listener.port))
            await self.writer.drain()

    async def _data(self) -> TlsStream | None:
        """After the 150: the data connection (TLS done), checked against our identity."""
        listener, self.listener = self.listener, None
        assert listener is not None
        try:
            stream = await listener.accept(DATA_ACCEPT_TIMEOUT)
        except DataConnectionError as exc:
            await self.refuse(425, "Cannot open data connection", exc.reason)
            return None
        cert = peer_certificate(stream.ssl_object)
        if cert is not None and oin_from_certificate(cert) != self.oin:
            stream.abort()
            await self.refuse(425, "Data connection certificate mismatch", "data_cert_mismatch")
            return None
        return stream

    async def _need_data(self) -> bool:
        if not self.prot_p:
            await self.refuse(521, "PBSZ 0 and PROT P required first", "prot_not_p")
            return False
        if self.listener is None:
            await self.refuse(425, "Use PASV or EPSV first", "no_passive")
            return False
        return True

    async def _send_bytes(self, data: bytes, what: str) -> None:
        await self.send(150, f"Opening data connection for {what}")
        stream = await self._data()
        if stream is None:
            return
        try:
            view = memoryview(data)
            for i in range(0, len(view), READ_CHUNK):
                await stream.write(bytes(view[i : i + READ_CHUNK]))
            metrics.DOWNLOAD_BYTES.inc(len(data))
            await stream.close()
        except (ConnectionError, ssl.SSLError):
            stream.abort()
            await self.refuse(426, "Data connection lost", "download_broken")
            return
        await self.send(226, "Transfer complete")

    def _start(self, coro: Awaitable[None]) -> None:
        async def wrapped() -> None:
            try:
                await coro
            except (ConnectionError, ssl.SSLError) as exc:
                self.log.info("ftp.transfer_error", error=repr(exc))
            except Exception as exc:
                self.log.error("ftp.transfer_failed", error=repr(exc))
                metrics.UPLOADS.labels("error").inc()
                with contextlib.suppress(Exception):
                    await self.refuse(451, "Local error; nothing was submitted", "local_error")

        self.transfer = asyncio.get_running_loop().create_task(wrapped())

    async def abort_transfer(self) -> None:
        task = self.transfer
        if task is None or task.done():
            await self.send(226, "No transfer to abort")
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await self.refuse(426, "Transfer aborted; nothing was submitted", "aborted")
        await self.send(226, "ABOR successful")

    # -- listings --------------------------------------------------------------------------
    async def _entries(self, path: str, node: Node) -> list[tuple[str, bool, int, float]] | None:
        """(name, is_dir, size, mtime) of a directory's entries; None if not a directory."""
        now = time.time()
        if node.kind == "root":
            return [("in", True, 0, now), ("out", True, 0, now)]
        if node.kind == "in":
            return [(soort, True, 0, now) for soort in sorted(self.soorten())]
        if node.kind == "soort":
            infos = await asyncio.to_thread(self.area().list)
            prefix = path + "/"
            return sorted(
                (i.path[len(prefix) :], False, i.size, i.mtime)
                for i in infos
                if i.path.startswith(prefix) and "/" not in i.path[len(prefix) :]
            )
        if node.kind == "out":
            out = []
            box = self.outbox()
            for f in await box.list():
                size = len(await box.render(f))
                out.append((f.name, False, size, f.mtime.timestamp() if f.mtime else now))
            return out
        return None

    async def _listing(self, arg: str, style: str) -> None:
        if not await self._need_data():
            return
        target = "" if arg.startswith("-") else arg  # "LIST -la" from some clients
        got = await self.resolve(target)
        if got is None:
            return
        path, node = got
        entries = await self._entries(path, node)
        if entries is None:
            await self.refuse(550, "No such directory", "no_such_directory")
            return
        lines = [_format(style, *e) for e in entries]
        self._start(self._send_bytes("".join(lines).encode(), f"listing of {path}"))

    async def cmd_LIST(self, arg: str) -> None:
        await self._listing(arg, "list")

    async def cmd_NLST(self, arg: str) -> None:
        await self._listing(arg, "nlst")

    async def cmd_MLSD(self, arg: str) -> None:
        await self._listing(arg, "mlsd")

    async def cmd_MLST(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        if node.is_dir:
            fact = _format("mlsd", path, True, 0, time.time()).rstrip("\r\n")
        else:
            info = await self._file_info(path, node)
            if info is None:
                await self.refuse(550, "No such file", "no_such_file")
                return
            fact = _format("mlsd", path, False, *info).rstrip("\r\n")
        await self.send(250, f"Listing {path}\n {fact}\nEnd")

    async def _file_info(self, path: str, node: Node) -> tuple[int, float] | None:
        if node.kind == "upload":
            area = self.area()
            size = area.size(path)
            if size is None:
                return None
            return size, area.file(path).stat().st_mtime
        if node.kind == "outfile":
            assert node.name is not None
            box = self.outbox()
            f = await box.find(node.name)
            if f is None:
                return None
            return len(await box.render(f)), (f.mtime.timestamp() if f.mtime else time.time())
        return None

    async def cmd_SIZE(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        info = await self._file_info(*got)
        if info is None:
            await self.refuse(550, "No such file", "no_such_file")
        else:
            await self.send(213, str(info[0]))

    async def cmd_MDTM(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        info = await self._file_info(*got)
        if info is None:
            await self.refuse(550, "No such file", "no_such_file")
        else:
            await self.send(213, datetime.fromtimestamp(info[1], UTC).strftime("%Y%m%d%H%M%S"))

    # -- RETR, DELE ------------------------------------------------------------------------
    async def cmd_RETR(self, arg: str) -> None:
        if not await self._need_data():
            return
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        offset, self.rest = self.rest or 0, None
        if node.kind != "outfile" or node.name is None:
            await self.refuse(550, "No such file (downloads are in /out/)", "no_such_file")
            return
        box = self.outbox()
        f = await box.find(node.name)
        if f is None:
            await self.refuse(550, "No such file", "no_such_file")
            return
        data = await box.render(f)
        self._start(self._send_bytes(data[offset:], path))

    async def cmd_DELE(self, arg: str) -> None:
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        if node.kind == "upload":
            assert self.oin is not None
            if (self.oin, path) in self.s.busy:
                await self.refuse(450, "Upload in progress", "busy")
            elif await asyncio.to_thread(self.area().remove, path):
                await self.send(250, "Partial upload deleted")
            else:
                await self.refuse(550, "No such file", "no_such_file")
            return
        if node.kind == "outfile" and node.name is not None:
            box = self.outbox()
            if await box.find(node.name) is None:
                await self.refuse(550, "No such file", "no_such_file")
                return
            await box.delete(node.name)
            await self.send(250, "Deleted")
            return
        await self.refuse(550, "Cannot delete this", "delete_not_allowed")

    # -- uploads ---------------------------------------------------------------------------
    async def cmd_STOR(self, arg: str) -> None:
        await self._store(arg, append=False)

    async def cmd_APPE(self, arg: str) -> None:
        await self._store(arg, append=True)

    async def _store(self, arg: str, *, append: bool) -> None:
        rest, self.rest = self.rest, None
        allo, self.allo = self.allo, None
        mime, self.mime = self.mime, None
        if not await self._need_data():
            return
        got = await self.resolve(arg)
        if got is None:
            return
        path, node = got
        assert self.oin is not None
        if node.kind != "upload" or node.soort is None or node.name is None:
            parts = [p for p in path.split("/") if p]
            if len(parts) == 3 and parts[0] == "in":
                await self.refuse(
                    550,
                    "Berichtsoort not allowed for you over FTP",
                    "berichtsoort_not_allowed",
                    berichtsoort=parts[1][:80],
                )
            else:
                await self.refuse(553, "Uploads go to /in/<berichtsoort>/<file>", "upload_path")
            return
        try:
            check_upload_name(node.name)
        except PathRefused as exc:
            await self.refuse(553, exc.message, exc.reason)
            return
        aanlevering = self._aanlevering(
            node.soort, node.name, StoredBlob("0" * 64, 0), mime or mime_type_for(node.name)
        )
        try:
            self.s.intake.precheck(aanlevering)
        except IntakeRefused as exc:
            await self.refuse(550, exc.melding, exc.reden)
            return
        soort = self.s.registry.current.berichtsoorten[node.soort]
        limit = soort.max_size  # streamed to the payload store: the berichtsoort's limit
        if allo is not None and allo > limit:
            await self.refuse(552, f"Too large: at most {limit} bytes", "too_large")
            return
        key = (self.oin, path)
        if key in self.s.busy:
            await self.refuse(450, "An upload of this file is in progress", "busy")
            return
        area = self.area()
        existing = area.size(path) or 0
        offset = existing if append else (rest or 0)
        if offset > existing:
            await self.refuse(
                554, f"REST {offset} beyond the {existing} bytes received", "rest_beyond"
            )
            return
        usage = await asyncio.to_thread(area.usage)
        quota_left = self.s.config.quota_bytes - (usage - existing) - offset
        if quota_left <= 0:
            await self.refuse(552, "Quota exceeded", "quota")
            return
        upload = Upload(area, path, limit=limit, quota_left=quota_left)
        self.s.busy.add(key)
        if offset:
            metrics.RESUMES.inc()
        self._start(self._receive(upload, offset, node.soort, node.name, allo, mime, key))

    def _aanlevering(self, soort: str, name: str, blob: StoredBlob, mime: str) -> Aanlevering:
        assert self.oin is not None
        return Aanlevering(
            sender_oin=self.oin,
            koppelvlak="ftp",
            berichtsoort=soort,
            belanghebbende=Identiteit(self.oin, "OIN"),
            rol_belanghebbende="Bedrijf",
            inhoud=Document(mime, name, blob=blob),
            aanleverkenmerk=name,
        )

    async def _receive(
        self,
        upload: Upload,
        offset: int,
        soort: str,
        name: str,
        allo: int | None,
        mime: str | None,
        key: tuple[str, str],
    ) -> None:
        try:
            await self._receive_inner(upload, offset, soort, name, allo, mime)
        finally:
            self.s.busy.discard(key)

    async def _receive_inner(
        self,
        upload: Upload,
        offset: int,
        soort: str,
        name: str,
        allo: int | None,
        mime: str | None,
    ) -> None:
        await self.send(150, f"Ready to receive {name} at offset {offset}")
        stream = await self._data()
        if stream is None:
            return
        log = self.log.bind(berichtsoort=soort, aanleverkenmerk=name)
        started = time.monotonic()
        try:
            await upload.open(offset)
            while True:
                async with asyncio.timeout(self.s.config.timeout_seconds):
                    chunk = await stream.read(READ_CHUNK)
                if not chunk:
                    break
                await upload.write(chunk)
                metrics.UPLOAD_BYTES.inc(len(chunk))
        except LimitExceeded as exc:
            await upload.discard()  # before the client notices the cut-off
            stream.abort()
            metrics.UPLOADS.labels(exc.reason).inc()
            what = "Quota exceeded" if exc.reason == "quota" else "File too large"
            await self.refuse(552, f"{what} (limit {exc.limit} bytes); upload removed", exc.reason)
            return
        except (Truncated, ConnectionError, ssl.SSLError, TimeoutError) as exc:
            stream.abort()
            await upload.close(durable=False)
            metrics.UPLOADS.labels("incomplete").inc()
            await self.refuse(
                426,
                f"Upload incomplete ({upload.size} bytes kept); resume with REST {upload.size}",
                "incomplete",
                error=type(exc).__name__,
            )
            return
        except asyncio.CancelledError:
            stream.abort()
            with contextlib.suppress(Exception):
                await asyncio.shield(upload.close(durable=False))
            metrics.UPLOADS.labels("aborted").inc()
            raise
        await close_quietly(stream)
        await upload.close(durable=True)
        if allo is not None and upload.size != allo:
            metrics.UPLOADS.labels("size_mismatch").inc()
            await self.refuse(
                451,
                f"{upload.size} bytes received, ALLO announced {allo}; kept as partial",
                "size_mismatch",
            )
            return
        elapsed = max(time.monotonic() - started, 1e-6)
        if mime is None:  # no SITE MIME: by the name, else by the first bytes
            head = await asyncio.to_thread(_head, upload.area.file(upload.vpath))
            mime = mime_type_for(name, head)
        archived = self.s.archive.exchange("ftp", transport=self.writer)  # docs/archive.md
        facts = {"berichtsoort": soort, "bestandsnaam": name, "size": upload.size,
                 "sha256": upload.sha256, "resumed_from": offset, "mime_type": mime}  # fmt: skip
        if not await archived.received("ftp.upload", b"", oin=self.oin, **facts):
            await self.refuse(451, "Gateway temporarily unavailable; send again", "archive")
            return
        blob = await promote(upload, self.s.store)
        try:
            accepted = await self.s.intake.aanleveren(self._aanlevering(soort, name, blob, mime))
        except IntakeRefused as exc:
            metrics.UPLOADS.labels("refused").inc()
            await self.refuse(
                552 if exc.reden == IntakeRefused.TE_GROOT else 550, exc.melding, exc.reden
            )
            return
        except IntakeUnavailable:
            metrics.UPLOADS.labels("error").inc()
            await self.refuse(
                451, "Gateway temporarily unavailable; send again", "intake_unavailable"
            )
            return
        metrics.UPLOADS.labels("accepted").inc()
        status = f"{name}.{accepted.kenmerk}.status.xml"
        done = f"Transfer complete; kenmerk {accepted.kenmerk}; status /out/{status}"
        kenmerk = str(accepted.kenmerk)
        if not await archived.answered("ftp.reply", b"226 " + done.encode(), kenmerk=kenmerk):
            await self.refuse(451, "Gateway temporarily unavailable; send again", "archive")
            return
        log.info(
            "ftp.upload_accepted",
            kenmerk=str(accepted.kenmerk),
            size=blob.size,
            sha256=blob.sha256,
            mime_type=mime,
            resumed_from=offset,
            mb_per_s=round((upload.size - offset) / elapsed / 1e6, 1),
        )
        await self.send(226, done)


def _head(path: Path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(SNIFF_BYTES)


def _format(style: str, name: str, is_dir: bool, size: int, mtime: float) -> str:
    ts = datetime.fromtimestamp(mtime, UTC)
    if style == "nlst":
        return f"{name}\r\n"
    if style == "mlsd":
        kind = "dir" if is_dir else "file"
        return f"type={kind};size={size};modify={ts:%Y%m%d%H%M%S}; {name}\r\n"
    mode = "drwxr-x---" if is_dir else "-rw-r-----"
    return f"{mode} 1 ftp ftp {size:>12} {ts:%b %d %H:%M} {name}\r\n"
