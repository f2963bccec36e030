"""Findings: what a validation profile says about a document, as values.

A :class:`Finding` is one reason to refuse (severity ``fatal`` or ``error``) or one remark
(``warning``, ``info``) from a validation step: an XSD error, a Schematron assertion that
failed, or a hardened-parser refusal. Findings are rendered into ``statusdetails`` one per
line, in the same form for every status channel (WUS, SMTP return mail, FTP status file),
and as JSON by ``digipoort validate --json``. The list is bounded: at most
``max_findings`` lines, each at most :data:`MAX_TEXT` characters, and a last line saying
how many more there were.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from validators.content import Violation

__all__ = [
    "MAX_FINDINGS",
    "MAX_TEXT",
    "REFUSING",
    "Finding",
    "Verdict",
    "compact_location",
    "findings_from_violations",
    "format_findings",
    "refuses",
    "rule_id_of",
    "verdict",
]

#: Findings listed in statusdetails at most (the rest are counted).
MAX_FINDINGS: Final = 50
#: Characters of a finding's text or location kept at most.
MAX_TEXT: Final = 400
#: Severities that refuse a document; anything else (``warning``, ``info``) does not.
REFUSING: Final = frozenset({"fatal", "error"})

_STEP: Final = re.compile(r"\*:([A-Za-z_][\w.-]*)\[namespace-uri\(\)='([^']*)'\]")
_PREFIXES: Final = {
    "urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2": "cac:",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2": "cbc:",
    "urn:oasis:names:specification:ubl:schema:xsd:CommonExtensionComponents-2": "ext:",
}
_RULE_PREFIX: Final = re.compile(r"^\s*\[([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})\]\s*-?\s*")


@dataclass(frozen=True)
class Finding:
    """One finding. ``rule``: ``BR-01``, ``BR-NL-1``, ``UBL-SR-12``, or for the XSD step
    ``XSD`` (for the hardened parser: its refusal code, e.g. ``dtd_forbidden``);
    ``location``: an XPath for Schematron findings, ``regel N`` for XSD findings."""

    rule: str
    severity: str
    text: str
    location: str | None = None
    step: str | None = None

    @property
    def refusing(self) -> bool:
        return self.severity in REFUSING

    def line(self) -> str:
        """The statusdetails line: ``BR-01 [fatal] text (bij /Invoice[1])``."""
        where = f" (bij {_clip(self.location)})" if self.location else ""
        return f"{self.rule} [{self.severity}] {_clip(self.text)}{where}"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_TEXT else flat[: MAX_TEXT - 1] + "…"


def compact_location(xpath: str) -> str:
    """Schematron's full path, readable: ``/*:Invoice[namespace-uri()='…Invoice-2'][1]
    /*:Note[namespace-uri()='…CommonBasicComponents-2'][1]`` → ``/Invoice[1]/cbc:Note[1]``."""
    return _STEP.sub(lambda m: _PREFIXES.get(m.group(2), "") + m.group(1), xpath)


def rule_id_of(text: str, explicit: str | None) -> tuple[str, str]:
    """The rule id and the text without its ``[ID]`` prefix.

    CEN's compiled rules carry the id in an ``id`` attribute *and* as a ``[BR-01]-``
    prefix of the text; SI-UBL's only as the prefix."""
    match = _RULE_PREFIX.match(text)
    rest = text[match.end() :] if match else text
    if explicit:
        return explicit, rest
    return (match.group(1), rest) if match else ("SCHEMATRON", text)


def refuses(findings: Iterable[Finding]) -> bool:
    return any(f.refusing for f in findings)


def findings_from_violations(violations: Sequence[Violation], step: str | None) -> list[Finding]:
    """Violations of the hardened parser / XSD as findings (all refusing)."""
    return [
        Finding(
            "XSD" if v.code == "schema" else v.code,
            "fatal",
            v.message,
            f"regel {v.line}" if v.line else None,
            step,
        )
        for v in violations
    ]


@dataclass(frozen=True)
class Verdict:
    """The status the gateway records for a profile's findings: 311 ``VAS500`` when any
    finding refuses, else 301 (with the warnings, if any, as details)."""

    code: str
    foutcode: str | None
    foutbeschrijving: str | None
    details: str | None

    @property
    def accepted(self) -> bool:
        return self.code == "301"


def verdict(
    findings: Sequence[Finding], *, profile: str | None, max_findings: int = MAX_FINDINGS
) -> Verdict:
    if refuses(findings):
        details = format_findings(findings, profile=profile, max_findings=max_findings)
        return Verdict("311", "VAS500", "Validatie niet gelukt", details)
    if findings:
        details = format_findings(findings, profile=profile, max_findings=max_findings)
        return Verdict("301", None, None, details)
    return Verdict("301", None, None, None)


def format_findings(
    findings: Sequence[Finding], *, profile: str | None = None, max_findings: int = MAX_FINDINGS
) -> str:
    """Statusdetails: refusing findings first, then the others; bounded."""
    ordered = sorted(findings, key=lambda f: not f.refusing)  # stable: keeps rule order
    lines = [f.line() for f in ordered[: max(0, max_findings)]]
    if len(ordered) > max_findings:
        lines.append(f"... en nog {len(ordered) - max_findings} bevinding(en)")
    if profile:
        lines.append(f"validatieprofiel: {profile}")
    return "\n".join(lines)
