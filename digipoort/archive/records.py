"""The archive's entry format (pure: bytes in, bytes out; no I/O).

A segment file is a sequence of entries, each::

    <header: one line of JSON, sorted keys>\\n<payload: exactly header.len bytes>\\n

The header names the payload's length and SHA-256 and the hash of the previous entry's
header (``prev``); the first entry's ``prev`` is :func:`genesis` of the segment name. An
entry's hash is the SHA-256 of its header line. So every payload byte is covered by its
header, every header by the next one's ``prev``, and the last header's hash (the segment's
*head*) by the day's signed manifest: change, insert, remove or reorder anything and the
chain breaks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

__all__ = [
    "MAX_HEADER",
    "Entry",
    "SegmentDamaged",
    "encode_entry",
    "genesis",
    "read_entries",
]

VERSION: Final = 1
#: A header line longer than this is damage, not an entry (facts are small).
MAX_HEADER: Final = 64 * 1024


class SegmentDamaged(Exception):
    """The segment does not parse or its chain does not verify at ``offset``."""

    def __init__(self, message: str, offset: int, entries: int, *, at_eof: bool = False) -> None:
        super().__init__(f"{message} at byte {offset} (after {entries} good entries)")
        self.reason = message
        self.offset = offset
        self.entries = entries
        #: the file ends inside this entry: a write cut short (a crash before its fsync,
        #: never acknowledged) rather than a change
        self.at_eof = at_eof


def genesis(segment: str) -> str:
    """The ``prev`` of a segment's first entry: binds the chain to the segment's name."""
    return hashlib.sha256(b"digipoort-archive-segment:" + segment.encode()).hexdigest()


def encode_entry(header: dict[str, Any], payload: bytes, prev: str) -> tuple[bytes, str]:
    """The entry's bytes and its hash. ``header`` gets ``v``, ``len``, ``sha256``, ``prev``."""
    full = {
        **header,
        "v": VERSION,
        "len": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "prev": prev,
    }
    line = json.dumps(full, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return b"".join((line, b"\n", payload, b"\n")), hashlib.sha256(line).hexdigest()


@dataclass(frozen=True)
class Entry:
    header: dict[str, Any]
    hash: str
    offset: int  # of the header line in the segment
    payload_offset: int

    @property
    def kind(self) -> str:
        return str(self.header.get("kind", ""))

    @property
    def kenmerk(self) -> str | None:
        value = self.header.get("kenmerk")
        return str(value) if value else None

    @property
    def exchange(self) -> str | None:
        value = self.header.get("exchange")
        return str(value) if value else None


def read_entries(
    fh: BinaryIO, segment: str, *, check_payloads: bool = True, limit: int | None = None
) -> Iterator[Entry]:
    """The entries of a segment, checking the chain as it goes; raise
    :class:`SegmentDamaged` at the first fault. ``check_payloads=False`` seeks over the
    payloads (a header-only scan for ``show``: the chain of headers is still checked).
    ``limit``: stop after this many bytes (a sealed segment's recorded length)."""
    prev = genesis(segment)
    offset = 0
    count = 0
    while limit is None or offset < limit:
        line = fh.readline(MAX_HEADER + 1)
        if not line:
            return
        if not line.endswith(b"\n"):
            short = len(line) <= MAX_HEADER
            raise SegmentDamaged("incomplete or oversized header", offset, count, at_eof=short)
        try:
            header = json.loads(line)
        except ValueError:
            raise SegmentDamaged("header is not JSON", offset, count) from None
        if not isinstance(header, dict) or header.get("v") != VERSION:
            raise SegmentDamaged("not an archive entry header", offset, count)
        if header.get("prev") != prev:
            raise SegmentDamaged("chain broken (prev does not match)", offset, count)
        if header.get("seq") != count:
            raise SegmentDamaged("sequence number out of order", offset, count)
        size = header.get("len")
        if not isinstance(size, int) or size < 0:
            raise SegmentDamaged("bad payload length", offset, count)
        entry_hash = hashlib.sha256(line[:-1]).hexdigest()
        payload_offset = offset + len(line)
        if check_payloads:
            digest = hashlib.sha256()
            left = size
            while left:
                chunk = fh.read(min(left, 1024 * 1024))
                if not chunk:
                    raise SegmentDamaged("payload cut short", offset, count, at_eof=True)
                digest.update(chunk)
                left -= len(chunk)
            if digest.hexdigest() != header.get("sha256"):
                raise SegmentDamaged("payload does not match its SHA-256", offset, count)
        else:
            fh.seek(size, 1)
        end = fh.read(1)
        if end != b"\n":
            raise SegmentDamaged("entry not terminated", offset, count, at_eof=not end)
        yield Entry(header, entry_hash, offset, payload_offset)
        prev = entry_hash
        count += 1
        offset = payload_offset + size + 1


def read_payload(fh: BinaryIO, entry: Entry) -> bytes:
    fh.seek(entry.payload_offset)
    return fh.read(int(entry.header["len"]))
