"""The archive writer: one thread per archive directory and process, appending records to
this process's segment of the day, with group commit.

Every caller hands its record over (:meth:`SegmentWriter.submit`) and waits for the
future. The thread takes everything queued, appends it with ``write`` and makes the whole
batch durable with one ``fsync`` — so N concurrent requests cost one fsync, not N (the
same trick as a database's group commit). Only then are the futures resolved.

A segment (``<dir>/<YYYY-MM-DD>/<host>-<pid>-<HHMMSS>-<rand>.seg``) is created with
``O_CREAT|O_EXCL|O_APPEND`` and never reopened: a new process, a new day, a segment past
``archive.segment_max_bytes`` or a failed write start a new one. A certificate is written
once per segment (kind ``certificate``, payload the DER), before the first record naming
it. A failed write or fsync fails the whole batch (the callers refuse fail-closed) and
abandons the segment: the next batch starts a new one, so a torn tail is never followed by
good entries.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import structlog

from digipoort.archive import metrics
from digipoort.archive.records import encode_entry, genesis
from digipoort.payloads import fsync_dir

__all__ = ["Record", "SegmentWriter", "day_name", "utc_now"]

log = structlog.get_logger(__name__)

SEGMENT_SUFFIX: Final = ".seg"
#: A writer thread with nothing to do for this long ends (a new record starts it again).
IDLE_EXIT_SECONDS: Final = 120.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def day_name(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d")


@dataclass
class Record:
    header: dict[str, Any]
    payload: bytes
    certificates: tuple[bytes, ...] = ()
    submitted: float = field(default_factory=time.monotonic)
    future: concurrent.futures.Future[str] = field(default_factory=concurrent.futures.Future)


class _Segment:
    def __init__(self, root: Path, moment: datetime) -> None:
        self.day = day_name(moment)
        directory = root / self.day
        fresh = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            fsync_dir(root)
        host = socket.gethostname().replace("-", "_")[:40] or "host"
        self.name = f"{host}-{os.getpid()}-{moment:%H%M%S}-{secrets.token_hex(3)}{SEGMENT_SUFFIX}"
        self.path = directory / self.name
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        self.fd = os.open(self.path, flags, 0o640)
        fsync_dir(directory)
        self.prev = genesis(self.name)
        self.seq = 0
        self.size = 0
        self.certificates: set[str] = set()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


class SegmentWriter:
    """Appends records durably; thread-safe, usable from any event loop."""

    def __init__(
        self,
        root: Path,
        *,
        fsync: bool = True,
        segment_max_bytes: int = 1024**3,
        on_tick: Callable[[], None] | None = None,
        tick_seconds: float = 60.0,
    ) -> None:
        self.root = root
        self.fsync = fsync
        self.segment_max_bytes = segment_max_bytes
        self._on_tick = on_tick
        self._tick_seconds = tick_seconds
        self._queue: queue.SimpleQueue[Record] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._segment: _Segment | None = None
        self._next_tick = 0.0

    def submit(self, record: Record) -> concurrent.futures.Future[str]:
        self._queue.put(record)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name=f"archive-writer:{self.root}", daemon=True
                )
                self._thread.start()
        return record.future

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        idle_since = time.monotonic()
        while True:
            self._tick()
            try:
                first = self._queue.get(timeout=min(self._tick_seconds, 5.0))
            except queue.Empty:
                if time.monotonic() - idle_since > IDLE_EXIT_SECONDS:
                    with self._lock:  # a record queued meanwhile keeps us alive
                        if self._queue.empty():
                            self._close_segment()
                            self._thread = None
                            return
                continue
            batch = [first]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 4096:
                    batch.append(self._queue.get_nowait())
            self._write(batch)
            idle_since = time.monotonic()

    def _tick(self) -> None:
        now = time.monotonic()
        if self._on_tick is None or now < self._next_tick:
            return
        self._next_tick = now + self._tick_seconds
        try:
            self._on_tick()
        except Exception as exc:  # maintenance must never stop the writer
            log.warning("archive.maintenance_failed", error=repr(exc))

    def _close_segment(self) -> None:
        if self._segment is not None:
            self._segment.close()
            self._segment = None

    def _current(self, moment: datetime, incoming: int) -> _Segment:
        seg = self._segment
        if seg is not None and (
            seg.day != day_name(moment) or seg.size + incoming > self.segment_max_bytes
        ):
            self._close_segment()
            seg = None
        if seg is None:
            seg = self._segment = _Segment(self.root, moment)
        return seg

    def _write(self, batch: list[Record]) -> None:
        moment = utc_now()
        at = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        try:
            seg = self._current(moment, sum(len(r.payload) for r in batch))
            refs: list[str] = []
            written = 0
            for record in batch:
                for der in record.certificates:
                    fingerprint = hashlib.sha256(der).hexdigest()
                    if fingerprint not in seg.certificates:
                        written += self._append(seg, {"kind": "certificate", "at": at}, der)
                        seg.certificates.add(fingerprint)
                refs.append(f"{seg.day}/{seg.name}#{seg.seq}")
                written += self._append(seg, {**record.header, "at": at}, record.payload)
            if self.fsync:
                os.fsync(seg.fd)
        except OSError as exc:
            metrics.FAILURES.labels("write").inc()
            log.error("archive.write_failed", error=repr(exc), records=len(batch))
            self._close_segment()  # abandon: the next batch starts a fresh segment
            for record in batch:
                record.future.set_exception(exc)
            return
        metrics.BYTES.inc(written)
        metrics.BATCH.observe(len(batch))
        done = time.monotonic()
        for record, ref in zip(batch, refs, strict=True):
            metrics.WRITE_LATENCY.observe(done - record.submitted)
            record.future.set_result(ref)

    def _append(self, seg: _Segment, header: dict[str, Any], payload: bytes) -> int:
        data, entry_hash = encode_entry({**header, "seq": seg.seq}, payload, seg.prev)
        view = memoryview(data)
        while view:
            n = os.write(seg.fd, view)
            view = view[n:]
        seg.prev = entry_hash
        seg.seq += 1
        seg.size += len(data)
        return len(data)
