"""The archive directory: day directories, their segments, and a segment's summary
(entries, length, SHA-256 of the file, head of the chain) — read by closing and verifying."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from digipoort.archive.records import SegmentDamaged, genesis, read_entries
from digipoort.archive.writer import SEGMENT_SUFFIX

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "TIMESTAMP",
    "SegmentSummary",
    "day_chain",
    "day_dirs",
    "segment_files",
    "summarise",
]

MANIFEST: Final = "MANIFEST"
SIGNATURE: Final = "MANIFEST.p7s"
TIMESTAMP: Final = "MANIFEST.tsr"
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def day_dirs(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and _DAY.match(p.name))


def segment_files(day_dir: Path) -> list[Path]:
    return sorted(p for p in day_dir.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


@dataclass(frozen=True)
class SegmentSummary:
    name: str
    entries: int
    length: int  # bytes of whole entries
    size: int  # bytes in the file (length + a torn tail)
    sha256: str  # of the whole file
    head: str  # hash of the last entry (genesis for an empty segment)

    def line(self) -> dict[str, Any]:
        return {
            "segment": self.name,
            "entries": self.entries,
            "length": self.length,
            "size": self.size,
            "sha256": self.sha256,
            "head": self.head,
        }


class _Hashing:
    """A reader that hashes what passes through (read_entries never seeks when it checks
    payloads)."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def readline(self, limit: int = -1) -> bytes:
        data = self._fh.readline(limit)
        self.digest.update(data)
        return data

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.digest.update(data)
        return data

    def rest(self) -> None:
        while chunk := self._fh.read(1024 * 1024):
            self.digest.update(chunk)


def summarise(path: Path, *, day: str | None = None, limit: int | None = None) -> SegmentSummary:
    """Walk the segment's chain (every payload hashed). A write cut short at the end of the
    file (a crash before fsync: never acknowledged) ends the segment; any other fault
    raises :class:`SegmentDamaged`, as does an entry written on another ``day`` than its
    directory's (moved). ``limit``: the length a manifest recorded."""
    with open(path, "rb") as raw:
        fh = _Hashing(raw)
        head, entries, length = genesis(path.name), 0, 0
        try:
            for entry in read_entries(fh, path.name, limit=limit):  # type: ignore[arg-type]
                if day is not None and not str(entry.header.get("at", "")).startswith(day):
                    raise SegmentDamaged("entry written on another day", entry.offset, entries)
                head, entries = entry.hash, entries + 1
                length = entry.payload_offset + int(entry.header["len"]) + 1
        except SegmentDamaged as damage:
            if not damage.at_eof or limit is not None:
                raise
        fh.rest()
        size = raw.tell()
    return SegmentSummary(path.name, entries, length, size, fh.digest.hexdigest(), head)


def day_chain(day: str, summaries: list[SegmentSummary]) -> list[str]:
    """The day's hash chain: one link per segment (its head and file hash), in name order."""
    chain = hashlib.sha256(b"digipoort-archive-day:" + day.encode()).hexdigest()
    links = []
    for s in summaries:
        chain = hashlib.sha256(f"{chain}:{s.name}:{s.head}:{s.sha256}".encode()).hexdigest()
        links.append(chain)
    return links
