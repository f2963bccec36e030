"""What the koppelvlak adapters call: one :class:`Exchange` per request (a WUS POST, an
SMTP DATA, an FTP upload, a push to a recipient), with a record per direction.

Each hook is one or two lines in the adapter::

    archived = self.archive.exchange("wus", transport=request.transport)
    if not await archived.received("wus.request", body, oin=oin, operation=name):
        raise <the protocol's technical fault>
    ...
    if not await archived.answered("wus.response", response, kenmerk=kenmerk):
        raise <the protocol's technical fault>

``received``/``answered`` return True once the record is durable (or when the archive is
off) and False when it could not be written (logged and counted here) — the adapter then
refuses fail-closed (docs/archive.md). The TLS facts (version, cipher, the peer's
certificate fingerprint and chain) are read from the transport when the exchange is made;
the certificates themselves are written once per segment.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import structlog

from digipoort.archive import metrics
from digipoort.archive.chain import Issuers, fingerprint
from digipoort.archive.writer import Record, SegmentWriter
from digipoort.config import Settings

__all__ = ["Exchange", "Recorder", "disabled", "recorder"]

log = structlog.get_logger(__name__)

_MAX_FACT = 1024


class Recorder:
    """The process's archive for one directory (see :func:`recorder`)."""

    def __init__(self, settings: Settings | None) -> None:
        self.enabled = settings is not None and settings.archive.enabled
        self.settings = settings
        self._writer: SegmentWriter | None = None
        self._issuers: Issuers | None = None
        self.root: Path | None = None
        self.wus_operations: frozenset[str] = frozenset()
        if settings is not None and self.enabled:
            cfg = settings.archive
            self.root = settings.resolve(cfg.dir)
            self.wus_operations = frozenset(cfg.wus_operations)
            self._issuers = Issuers(settings)
            self._writer = SegmentWriter(
                self.root,
                fsync=cfg.fsync,
                segment_max_bytes=cfg.segment_max_bytes,
                on_tick=self._maintenance if cfg.maintenance else None,
                tick_seconds=cfg.maintenance_interval_seconds,
            )
        self._maintaining = threading.Lock()

    def exchange(
        self,
        koppelvlak: str,
        *,
        transport: Any = None,
        ssl_object: Any = None,
        peer: Any = None,
    ) -> Exchange:
        """A new exchange; ``transport`` (anything with ``get_extra_info``) or
        ``ssl_object``/``peer`` give the TLS and network facts."""
        if not self.enabled:
            return Exchange(None, koppelvlak, {}, ())
        facts: dict[str, Any] = {}
        certificates: tuple[bytes, ...] = ()
        try:
            if transport is not None:
                ssl_object = ssl_object or transport.get_extra_info("ssl_object")
                peer = peer or transport.get_extra_info("peername")
            if peer:
                facts["peer"] = str(peer[0]) if isinstance(peer, tuple | list) else str(peer)
            if ssl_object is not None:
                facts["tls_version"] = ssl_object.version()
                cipher = ssl_object.cipher()
                if cipher:
                    facts["tls_cipher"] = cipher[0]
                leaf = ssl_object.getpeercert(binary_form=True)
                if leaf:
                    assert self._issuers is not None
                    certificates = self._issuers.chain(leaf)
                    facts["peer_certificate"] = fingerprint(leaf)
                    facts["peer_chain"] = [fingerprint(c) for c in certificates]
        except Exception as exc:  # a closed transport: archive what is known, say so
            facts["tls_facts_error"] = type(exc).__name__
        return Exchange(self, koppelvlak, facts, certificates)

    async def write(self, koppelvlak: str, record: Record) -> bool:
        assert self._writer is not None
        try:
            await asyncio.wrap_future(self._writer.submit(record))
        except Exception as exc:
            metrics.RECORDS.labels(koppelvlak, "failed").inc()
            log.error(
                "archive.record_failed",
                koppelvlak=koppelvlak,
                kind=record.header.get("kind"),
                kenmerk=record.header.get("kenmerk"),
                error=repr(exc),
            )
            return False
        metrics.RECORDS.labels(koppelvlak, "archived").inc()
        return True

    def _maintenance(self) -> None:
        """Close the days that are over and purge the expired ones, in a thread of its own
        (closing hashes whole days: never in the writer's way)."""
        if self.settings is None or not self._maintaining.acquire(blocking=False):
            return

        def run() -> None:
            from digipoort.archive.manifest import maintain

            try:
                assert self.settings is not None
                maintain(self.settings)
            except Exception as exc:
                metrics.FAILURES.labels("maintenance").inc()
                log.warning("archive.maintenance_failed", error=repr(exc))
            finally:
                self._maintaining.release()

        threading.Thread(target=run, name="archive-maintenance", daemon=True).start()


class Exchange:
    """One request and its answer(s). No-op when the archive is off."""

    def __init__(
        self,
        recorder: Recorder | None,
        koppelvlak: str,
        facts: dict[str, Any],
        certificates: tuple[bytes, ...],
    ) -> None:
        self._recorder = recorder
        self.koppelvlak = koppelvlak
        self.id = uuid.uuid4().hex
        self._facts = facts
        self._certificates = certificates
        self._first = True
        self.active = recorder is not None
        self.started = False  # something was received: answers are archived from now on

    async def received(self, kind: str, payload: bytes, **facts: Any) -> bool:
        """What came in (before it is acted on). A WUS operation outside
        ``archive.wus_operations`` switches the exchange off."""
        recorder = self._recorder
        if recorder is not None and kind == "wus.request":
            if facts.get("operation") not in recorder.wus_operations:
                self.active = False
        self.started = True
        return await self._record(kind, payload, facts)

    async def answered(self, kind: str, payload: bytes, **facts: Any) -> bool:
        """What goes out (before it is sent); nothing when nothing was received (a request
        refused before it was authenticated is not evidence of anything)."""
        if not self.started:
            return True
        return await self._record(kind, payload, facts)

    async def _record(self, kind: str, payload: bytes, facts: dict[str, Any]) -> bool:
        if not self.active or self._recorder is None:
            return True
        header: dict[str, Any] = {
            "kind": kind,
            "koppelvlak": self.koppelvlak,
            "exchange": self.id,
        }
        kenmerk = facts.pop("kenmerk", None)
        if kenmerk:
            header["kenmerk"] = str(kenmerk)
        oin = facts.pop("oin", None)
        if oin:
            header["oin"] = str(oin)
        certificates: tuple[bytes, ...] = ()
        if self._first:
            facts = {**self._facts, **facts}
            certificates = self._certificates
            self._first = False
        # facts are small by construction; a bound keeps every header far below MAX_HEADER
        header["facts"] = {
            k: v[:_MAX_FACT] if isinstance(v, str) else v for k, v in facts.items() if v is not None
        }
        record = Record(header, payload, certificates)
        return await self._recorder.write(self.koppelvlak, record)


_DISABLED = Recorder(None)
_recorders: dict[Path, Recorder] = {}
_recorders_lock = threading.Lock()


def _forget_in_child() -> None:
    """A forked child never shares its parent's segment (one writer per segment)."""
    global _recorders_lock
    _recorders.clear()
    _recorders_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_in_child)


def disabled() -> Recorder:
    return _DISABLED


def recorder(settings: Settings) -> Recorder:
    """The process's recorder for ``settings.archive.dir`` (one writer thread per
    directory), or a disabled one when ``archive.enabled`` is false."""
    if not settings.archive.enabled:
        return _DISABLED
    root = settings.resolve(settings.archive.dir)
    with _recorders_lock:
        found = _recorders.get(root)
        if found is None:
            found = _recorders[root] = Recorder(settings)
        return found
