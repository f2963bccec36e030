"""``digipoort archive show KENMERK``: what was received and answered for an envelope.

Two passes over the archive's headers (payloads are skipped by seeking, the header chain
is still checked): the entries naming the kenmerk give their exchanges; then every entry
of those exchanges (the request archived before the kenmerk existed, the answer, pushes
to recipients) and the certificates they name, from the days around them."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509

from digipoort.archive.days import day_dirs, segment_files
from digipoort.archive.records import Entry, SegmentDamaged, read_entries, read_payload
from digipoort.config import Settings

__all__ = ["Found", "find"]

#: payloads up to this size are shown inline (``--out`` writes every payload's exact bytes)
INLINE_LIMIT = 64 * 1024


@dataclass
class Found:
    day: str
    segment: Path
    entry: Entry

    @property
    def ref(self) -> str:
        return f"{self.day}/{self.segment.name}#{self.entry.header.get('seq')}"

    def payload(self) -> bytes:
        with open(self.segment, "rb") as fh:
            return read_payload(fh, self.entry)

    def as_dict(self, *, inline: bool = True) -> dict[str, Any]:
        h = self.entry.header
        out: dict[str, Any] = {
            "ref": self.ref,
            "at": h.get("at"),
            "kind": h.get("kind"),
            "koppelvlak": h.get("koppelvlak"),
            "exchange": h.get("exchange"),
            "kenmerk": h.get("kenmerk"),
            "oin": h.get("oin"),
            "facts": h.get("facts", {}),
            "bytes": h.get("len"),
            "sha256": h.get("sha256"),
        }
        if self.entry.kind == "certificate":
            try:
                cert = x509.load_der_x509_certificate(self.payload())
            except ValueError:
                out["certificate"] = "not a certificate"
            else:
                out["certificate"] = {
                    "subject": cert.subject.rfc4514_string(),
                    "issuer": cert.issuer.rfc4514_string(),
                    "serial": format(cert.serial_number, "x"),
                    "not_after": cert.not_valid_after_utc.isoformat(),
                }
            return out
        if inline and int(h.get("len", 0)) <= INLINE_LIMIT:
            data = self.payload()
            try:
                out["payload"] = data.decode("utf-8")
            except UnicodeDecodeError:
                out["payload_base64"] = base64.b64encode(data).decode()
        return out


def _scan(root: Path, days: list[str], problems: list[str]) -> list[Found]:
    found = []
    for day in days:
        day_dir = root / day
        if not day_dir.is_dir():
            continue
        for path in segment_files(day_dir):
            try:
                with open(path, "rb") as fh:
                    for entry in read_entries(fh, path.name, check_payloads=False):
                        found.append(Found(day, path, entry))
            except SegmentDamaged as damage:
                if not damage.at_eof:
                    problems.append(f"{day}/{path.name}: {damage}")
    return found


def find(
    settings: Settings, kenmerk: str, *, day: str | None = None
) -> tuple[list[Found], list[str]]:
    """The entries of every exchange that names ``kenmerk`` (in archive order), with the
    certificates they refer to; and the damage met on the way."""
    root = settings.resolve(settings.archive.dir)
    all_days = day_dirs(root)
    problems: list[str] = []
    scope = [day] if day else all_days
    hits: list[Found] = []
    exchanges: set[str] = set()
    hit_days: set[str] = set()
    for f in _scan(root, scope, problems):
        if f.entry.kenmerk == kenmerk:
            hits.append(f)
            hit_days.add(f.day)
            if f.entry.exchange:
                exchanges.add(f.entry.exchange)
    if not hits:
        return [], problems
    near: set[str] = set()
    for d in hit_days:  # a request archived just before midnight, its answer just after
        moment = date.fromisoformat(d)
        near |= {str(moment + timedelta(days=k)) for k in (-1, 0, 1)}
    entries = _scan(root, [d for d in all_days if d in near], [])
    related = [f for f in entries if f.entry.exchange in exchanges]
    needed = {c for f in related for c in f.entry.header.get("facts", {}).get("peer_chain", [])}
    seen: set[str] = set()
    certificates = []
    for f in entries:
        fp = f.entry.header.get("sha256")
        if f.entry.kind == "certificate" and fp in needed and fp not in seen:
            seen.add(str(fp))
            certificates.append(f)
    related.sort(key=lambda f: (str(f.entry.header.get("at")), f.ref))
    return certificates + related, problems
