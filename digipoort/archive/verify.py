"""``digipoort archive verify``: prove a day's integrity.

A closed day: the manifest's signature verifies and its signer is the gateway (the
configured ``pki.cert_file``, or a certificate issued by the configured CA/intermediates:
days signed before a key rollover stay verifiable); every line parses and the day's chain
recomputes; the segment files are exactly those listed, each with the listed size and
SHA-256, and each segment's entry chain verifies up to its listed length with the listed
count and head. An open day (today, or not closed yet): each segment's chain verifies (a
write cut short at the very end is noted, not a fault: it was never acknowledged).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from digipoort.archive.cms import SignatureInvalid, verify_detached
from digipoort.archive.days import (
    MANIFEST,
    SIGNATURE,
    TIMESTAMP,
    SegmentSummary,
    day_chain,
    day_dirs,
    segment_files,
    summarise,
)
from digipoort.archive.records import SegmentDamaged
from digipoort.config import Settings

__all__ = ["DayReport", "verify", "verify_day"]


@dataclass
class DayReport:
    day: str
    state: str  # "closed" | "open" | "missing"
    segments: int = 0
    entries: int = 0
    signed_at: str | None = None
    signer: str | None = None
    timestamped: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _trust(settings: Settings) -> tuple[set[bytes], list[x509.Certificate]]:
    own: set[bytes] = set()
    issuers: list[x509.Certificate] = []
    pki = settings.pki
    try:
        for cert in x509.load_pem_x509_certificates(settings.resolve(pki.cert_file).read_bytes()):
            own.add(cert.fingerprint(_SHA256()))
    except (OSError, ValueError):
        pass
    for path in (pki.ca_file, pki.intermediates_file):
        if path is None:
            continue
        try:
            issuers.extend(x509.load_pem_x509_certificates(settings.resolve(path).read_bytes()))
        except (OSError, ValueError):
            continue
    return own, issuers


def _SHA256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def _trusted(signer: x509.Certificate, own: set[bytes], issuers: list[x509.Certificate]) -> bool:
    if signer.fingerprint(_SHA256()) in own:
        return True
    for issuer in issuers:
        try:
            signer.verify_directly_issued_by(issuer)
        except Exception:  # noqa: S112 - any failure: not this issuer
            continue
        return True
    return False


def _tsa_trusted(settings: Settings, tsa: x509.Certificate) -> bool:
    ca_file = settings.archive.tsa_ca_file
    if ca_file is None:
        return True  # not configured: the token's own signature is all that is checked
    try:
        anchors = x509.load_pem_x509_certificates(settings.resolve(ca_file).read_bytes())
    except (OSError, ValueError):
        return False
    own = {a.fingerprint(_SHA256()) for a in anchors}
    return _trusted(tsa, own, anchors)


def verify_day(settings: Settings, day: str) -> DayReport:
    root = settings.resolve(settings.archive.dir)
    day_dir = root / day
    if not day_dir.is_dir():
        return DayReport(day, "missing", problems=[f"no archive day {day} in {root}"])
    if (day_dir / MANIFEST).exists() or (day_dir / SIGNATURE).exists():
        return _verify_closed(settings, day, day_dir)
    return _verify_open(day, day_dir)


def _verify_open(day: str, day_dir: Path) -> DayReport:
    report = DayReport(day, "open")
    for path in segment_files(day_dir):
        report.segments += 1
        try:
            s = summarise(path, day=day)
        except SegmentDamaged as damage:
            report.problems.append(f"{path.name}: {damage}")
            continue
        report.entries += s.entries
        if s.size > s.length:
            report.notes.append(
                f"{path.name}: last {s.size - s.length} bytes are a write in progress or cut"
                " short (never acknowledged)"
            )
    report.notes.append("not closed yet: no signed manifest")
    return report


def _verify_closed(settings: Settings, day: str, day_dir: Path) -> DayReport:
    report = DayReport(day, "closed")
    try:
        manifest = (day_dir / MANIFEST).read_bytes()
        signature = (day_dir / SIGNATURE).read_bytes()
    except OSError as exc:
        report.problems.append(f"manifest or signature unreadable: {exc.strerror or exc}")
        return report
    try:
        signed = verify_detached(manifest, signature)
    except SignatureInvalid as exc:
        report.problems.append(f"manifest signature: {exc}")
    else:
        own, issuers = _trust(settings)
        report.signer = signed.signer.subject.rfc4514_string()
        if signed.signing_time is not None:
            report.signed_at = signed.signing_time.isoformat().replace("+00:00", "Z")
        if not _trusted(signed.signer, own, issuers):
            report.problems.append("manifest signed by a certificate that is not the gateway's")
    if (day_dir / TIMESTAMP).exists():
        from digipoort.archive.tsa import TimestampInvalid, verify_token

        try:
            stamped_at, tsa = verify_token((day_dir / TIMESTAMP).read_bytes(), signature)
        except TimestampInvalid as exc:
            report.problems.append(f"time-stamp token: {exc}")
        else:
            report.timestamped = True
            report.notes.append(
                f"time-stamped {stamped_at.isoformat()} by {tsa.subject.rfc4514_string()}"
            )
            if not _tsa_trusted(settings, tsa):
                report.problems.append("time-stamp token from a TSA not in archive.tsa_ca_file")
    listed = _parse_manifest(day, manifest, report)
    on_disk = {p.name for p in segment_files(day_dir)}
    extra = sorted(
        p.name
        for p in day_dir.iterdir()
        if p.name not in listed and p.name not in (MANIFEST, SIGNATURE, TIMESTAMP)
    )
    for name in extra:
        report.problems.append(f"{name}: not listed in the manifest")
    summaries: list[SegmentSummary] = []
    for name, line in listed.items():
        report.segments += 1
        if name not in on_disk:
            report.problems.append(f"{name}: listed in the manifest but missing")
            continue
        try:
            s = summarise(day_dir / name, day=day, limit=int(line["length"]))
        except (SegmentDamaged, ValueError, KeyError) as damage:
            report.problems.append(f"{name}: {damage}")
            continue
        summaries.append(s)
        report.entries += s.entries
        for key, got in (("size", s.size), ("sha256", s.sha256), ("entries", s.entries),
                         ("head", s.head), ("length", s.length)):  # fmt: skip
            if line.get(key) != got:
                report.problems.append(f"{name}: {key} differs from the manifest")
    if len(summaries) == len(listed):
        links = day_chain(day, summaries)
        for (name, line), link in zip(listed.items(), links, strict=True):
            if line.get("chain") != link:
                report.problems.append(f"{name}: day chain differs from the manifest")
    return report


def _parse_manifest(day: str, manifest: bytes, report: DayReport) -> dict[str, dict[str, Any]]:
    listed: dict[str, dict[str, Any]] = {}
    lines = manifest.splitlines()
    parsed: list[dict[str, Any]] = []
    for number, raw in enumerate(lines, 1):
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError
        except ValueError:
            report.problems.append(f"manifest line {number} is not a JSON object")
            continue
        parsed.append(value)
    if not parsed or parsed[0].get("manifest") != 1 or parsed[0].get("day") != day:
        report.problems.append("manifest does not begin with this day's header line")
    if not parsed or not parsed[-1].get("end"):
        report.problems.append("manifest has no end line")
    for value in parsed:
        if "segment" in value:
            listed[str(value["segment"])] = value
    if parsed and parsed[-1].get("end"):
        end = parsed[-1]
        if end.get("segments") != len(listed) or end.get("entries") != sum(
            int(v.get("entries", 0)) for v in listed.values()
        ):
            report.problems.append("manifest end line totals differ from its segment lines")
        chains = [v.get("chain") for v in listed.values()]
        if end.get("chain") != (chains[-1] if chains else ""):
            report.problems.append("manifest end line chain differs from the last segment's")
    return listed


def verify(settings: Settings, day: str | None = None) -> list[DayReport]:
    root = settings.resolve(settings.archive.dir)
    days = [day] if day else day_dirs(root)
    return [verify_day(settings, d) for d in days]
