"""What every command group of an FTP session shares: the server-wide :class:`FtpShared`,
the per-connection state, replies and refusals, and path resolution.

The control connection is one :class:`adapters.ftp.session.Session`; its commands are
grouped by job in subclasses of :class:`SessionBase` (:mod:`adapters.ftp.datachannel`,
:mod:`adapters.ftp.files`, :mod:`adapters.ftp.upload`). Invariant: every refusal goes
through :meth:`SessionBase.refuse` — reply code + structlog line +
``digipoort_ftp_refused_total`` — and a path is used only after :meth:`SessionBase.resolve`
has normalised and classified it (:mod:`adapters.ftp.paths`).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog

from adapters.ftp import metrics
from adapters.ftp.commands import reply
from adapters.ftp.partials import PartialArea
from adapters.ftp.passive import DataListener, PassivePorts
from adapters.ftp.paths import Node, PathRefused, classify
from adapters.ftp.paths import normalise as normalise_path
from digipoort.archive import Recorder, disabled
from digipoort.config import FtpConfig, GroteBerichtenConfig, LimitsConfig
from digipoort.intake import Intake
from digipoort.payloads import PayloadStore
from digipoort.pki import CertificateVerifier
from digipoort.registry_store import RegistryHolder
from routing.afleveren.ftp import Outbox

log = structlog.get_logger("adapters.ftp.session")  # the name the log lines always had

READ_CHUNK = 256 * 1024


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


class SessionBase:
    """The state of one control connection and the plumbing every command uses."""

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
