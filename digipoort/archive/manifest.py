"""Closing a day: the signed manifest, sealing the files, and purging expired days.

A day (UTC) is closed once it is over plus ``archive.close_grace_seconds`` (writers roll
to the new day at midnight; the grace covers clock skew and a write in flight). Closing:

1. every segment of the day is walked (:func:`~digipoort.archive.days.summarise`): its
   chain must verify; a write cut short at the very end (a crash before fsync, never
   acknowledged to anyone) is allowed and recorded as ``size > length``;
2. ``MANIFEST`` is written — one JSON line per segment (entries, length, size, SHA-256,
   head, and the day's chain link), a first line naming the day and a last line with the
   totals and the day's final chain value;
3. ``MANIFEST.p7s``: a detached CMS signature over the manifest with the gateway's key
   (``pki.key_file``), its signingTime the close time; with ``archive.tsa_url`` also
   ``MANIFEST.tsr``, an RFC 3161 time-stamp token over the signature;
4. the segments and manifest files become read-only (0444) and the day directory 0555.

Files are written to a temporary name, fsync'ed and renamed; ``MANIFEST`` last, so a day
is closed exactly when its ``MANIFEST`` exists. One closer at a time (``flock`` on
``<dir>/.lock``), so several processes may run maintenance.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import stat
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import structlog

from digipoort.archive import metrics
from digipoort.archive.cms import load_identity, sign_detached
from digipoort.archive.days import (
    MANIFEST,
    SIGNATURE,
    TIMESTAMP,
    day_chain,
    day_dirs,
    segment_files,
    summarise,
)
from digipoort.archive.records import SegmentDamaged
from digipoort.config import Settings
from digipoort.payloads import fsync_dir

__all__ = ["CloseFailed", "close_day", "due_days", "maintain", "purge"]

log = structlog.get_logger(__name__)


class CloseFailed(Exception):
    pass


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@contextlib.contextmanager
def _locked(root: Path, *, wait: bool) -> Iterator[bool]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o640)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def is_closed(day_dir: Path) -> bool:
    return (day_dir / MANIFEST).exists()


def due_days(root: Path, now: datetime, grace_seconds: float) -> list[str]:
    """Days that are over (plus the grace) and not closed yet."""
    due = []
    for day in day_dirs(root):
        end = datetime.combine(date.fromisoformat(day), datetime.min.time(), UTC) + timedelta(
            days=1, seconds=grace_seconds
        )
        if now >= end and not is_closed(root / day):
            due.append(day)
    return due


def render_manifest(day: str, lines: list[dict[str, object]], closed_at: datetime) -> bytes:
    summaries_chain = [line["chain"] for line in lines]
    first = {"manifest": 1, "day": day, "closed_at": _iso(closed_at), "host": socket.gethostname()}
    last = {
        "end": True,
        "segments": len(lines),
        "entries": sum(int(str(line["entries"])) for line in lines),
        "chain": summaries_chain[-1] if summaries_chain else "",
    }
    out = [first, *lines, last]
    return b"".join(
        json.dumps(x, sort_keys=True, separators=(",", ":")).encode() + b"\n" for x in out
    )


def close_day(settings: Settings, day: str, *, now: datetime | None = None) -> bool:
    """Close ``day``; False when it was closed already. Raise :class:`CloseFailed`."""
    root = settings.resolve(settings.archive.dir)
    day_dir = root / day
    if not day_dir.is_dir():
        raise CloseFailed(f"no archive day {day}")
    with _locked(root, wait=True):
        if is_closed(day_dir):
            return False
        moment = now or datetime.now(UTC)
        summaries = []
        for path in segment_files(day_dir):
            try:
                summaries.append(summarise(path, day=day))
            except SegmentDamaged as damage:
                metrics.DAYS.labels("close_failed").inc()
                log.error("archive.close_refused", day=day, segment=path.name, error=str(damage))
                raise CloseFailed(f"{day}/{path.name}: {damage}") from None
        chain = day_chain(day, summaries)
        lines: list[dict[str, object]] = [
            {**s.line(), "chain": link} for s, link in zip(summaries, chain, strict=True)
        ]
        manifest = render_manifest(day, lines, moment)
        key, certs = load_identity(
            settings.resolve(settings.pki.cert_file), settings.resolve(settings.pki.key_file)
        )
        signature = sign_detached(manifest, key, certs)
        if settings.archive.tsa_url:
            from digipoort.archive.tsa import request_token

            _write_file(day_dir / TIMESTAMP, request_token(settings, signature))
        _write_file(day_dir / SIGNATURE, signature)
        _write_file(day_dir / MANIFEST, manifest)
        for path in day_dir.iterdir():
            path.chmod(0o444)
        day_dir.chmod(0o555)
        fsync_dir(day_dir)
        metrics.DAYS.labels("closed").inc()
        log.info(
            "archive.day_closed",
            day=day,
            segments=len(summaries),
            entries=sum(s.entries for s in summaries),
        )
        return True


def purge(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Remove closed days older than ``archive.retention_days``; an expired day that is
    not closed is kept (and logged): it has no manifest to prove it was never changed."""
    root = settings.resolve(settings.archive.dir)
    today = (now or datetime.now(UTC)).date()
    cutoff = today - timedelta(days=settings.archive.retention_days)
    removed = []
    with _locked(root, wait=True):
        for day in day_dirs(root):
            if date.fromisoformat(day) >= cutoff:
                continue
            day_dir = root / day
            if not is_closed(day_dir):
                log.warning("archive.purge_skipped_open_day", day=day)
                continue
            day_dir.chmod(stat.S_IRWXU)
            shutil.rmtree(day_dir)
            removed.append(day)
            metrics.DAYS.labels("purged").inc()
            log.info("archive.day_purged", day=day)
    return removed


def maintain(settings: Settings, *, now: datetime | None = None) -> list[str]:
    """Close the days that are due and purge expired ones (skipped while another process
    holds the lock). Returns the days closed."""
    root = settings.resolve(settings.archive.dir)
    moment = now or datetime.now(UTC)
    with _locked(root, wait=False) as mine:
        if not mine:
            return []
    closed = []
    for day in due_days(root, moment, settings.archive.close_grace_seconds):
        try:
            if close_day(settings, day, now=moment):
                closed.append(day)
        except CloseFailed:
            continue  # logged and counted; verify shows where
    purge(settings, now=moment)
    return closed
