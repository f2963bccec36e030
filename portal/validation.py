"""Validation findings for the portal: the one place the portal asks the validation code.

:func:`findings_for` answers the Aansluit Suite's "validate without submitting" with the
findings the validation stage would record; :func:`findings_from_details` reads them back
from the ``statusdetails`` of a recorded 311. Switching to another validation service
changes this module only.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Final

from digipoort.registry import Berichtsoort
from digipoort.xmlsafe import XmlLimits
from validators.content import Violation, check_mime, check_size
from validators.schemas import SchemaError, SchemaRegistry, validate_document

__all__ = ["Finding", "Validator", "findings_from_details"]

_LINE: Final = re.compile(r"^regel (\d+): (.*)$")
_RULE: Final = re.compile(r"^(\S+) \[(\w+)\] (.*?)(?: \(bij (.*)\))?$")


@dataclass(frozen=True)
class Finding:
    """One finding: rule id, severity, text and where in the document."""

    rule: str
    severity: str
    text: str
    location: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _from_violation(v: Violation) -> Finding:
    rule = "XSD" if v.code == "schema" else v.code
    return Finding(rule, "error", v.message, f"regel {v.line}" if v.line else None)


def findings_from_details(details: str | None) -> list[Finding]:
    """The findings in a 311's ``statusdetails`` (one per line)."""
    found: list[Finding] = []
    for raw in (details or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        rule = _RULE.match(line)
        if rule:
            found.append(Finding(rule[1], rule[2], rule[3], rule[4]))
            continue
        at = _LINE.match(line)
        if at:
            found.append(Finding("XSD", "error", at[2], f"regel {at[1]}"))
        else:
            found.append(Finding("VAS500", "error", line))
    return found


class Validator:
    """The validation stage's checks (size, MIME, hardened parse, XSD) on one document."""

    def __init__(self, schemas: SchemaRegistry, limits: XmlLimits) -> None:
        self._schemas = schemas
        self._limits = limits

    def findings_for(self, soort: Berichtsoort, data: bytes, mime_type: str) -> list[Finding]:
        """What the gateway would record for this document; empty: it would be 301.
        Raises :class:`SchemaError` when the berichtsoort's schema cannot be loaded."""
        violations: list[Violation] = []
        size = check_size(len(data), soort.max_size)
        if size is not None:
            violations.append(size)
        if soort.mime_types:
            mime = check_mime(mime_type, soort.mime_types)
            if mime is not None:
                violations.append(mime)
        if not violations and soort.xml:
            schema = self._schemas.get(soort.xsd) if soort.xsd else None
            violations = validate_document(data, schema, self._limits)
        return [_from_violation(v) for v in violations]


__all__ += ["SchemaError"]
