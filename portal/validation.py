"""Validation findings for the portal: the one place the portal asks the validation code.

:func:`findings_for` answers the Aansluit Suite's "validate without submitting" with the
findings the validation stage would record; :func:`findings_from_details` reads them back
from the ``statusdetails`` of a recorded 311. Switching to another validation service
changes this module only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

from digipoort.registry import Berichtsoort
from digipoort.xmlsafe import XmlLimits
from validators.artefacts import ArtefactError
from validators.content import Violation, check_mime, check_size
from validators.findings import REFUSING, findings_from_violations
from validators.findings import Finding as StageFinding
from validators.profileset import ProfileSet, ProfileUnavailable
from validators.schemas import SchemaError, SchemaRegistry, validate_document
from validators.schematron import SchematronError

__all__ = ["UNAVAILABLE", "Finding", "Validator", "findings_from_details"]

_LINE: Final = re.compile(r"^regel (\d+): (.*)$")
_RULE: Final = re.compile(r"^(\S+) \[(\w+)\] (.*?)(?: \(bij (.*)\))?$")


@dataclass(frozen=True)
class Finding:
    """One finding: rule id, severity, text and where in the document."""

    rule: str
    severity: str
    text: str
    location: str | None = None

    @property
    def refusing(self) -> bool:
        return self.severity in REFUSING

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


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
    """The validation stage's checks on one document: size and MIME limits, then the
    berichtsoort's validation profile (XSD + Schematron in the validation worker pool,
    docs/validation.md) or, without one, the hardened parse and its XSD."""

    def __init__(
        self,
        schemas: SchemaRegistry,
        limits: XmlLimits,
        profiles: Callable[[], ProfileSet] | None = None,
    ) -> None:
        self._schemas = schemas
        self._limits = limits
        self._profiles_factory = profiles
        self._profiles: ProfileSet | None = None

    def _profile_set(self) -> ProfileSet | None:
        """Started on first use: compiling the profiles costs seconds of CPU."""
        if self._profiles is None and self._profiles_factory is not None:
            self._profiles = self._profiles_factory()
        return self._profiles

    async def close(self) -> None:
        if self._profiles is not None:
            await self._profiles.close()

    async def findings_for(self, soort: Berichtsoort, data: bytes, mime_type: str) -> list[Finding]:
        """What the gateway would record for this document; no refusing finding: 301.
        Raises :data:`UNAVAILABLE` errors when the profile or schema cannot be used."""
        violations: list[Violation] = []
        size = check_size(len(data), soort.max_size)
        if size is not None:
            violations.append(size)
        if soort.mime_types:
            mime = check_mime(mime_type, soort.mime_types)
            if mime is not None:
                violations.append(mime)
        found: list[StageFinding]
        if violations:
            found = findings_from_violations(violations, None)
        elif not soort.xml:
            found = []
        elif soort.validation is not None and (profiles := self._profile_set()) is not None:
            spec = await profiles.get(soort.name)
            found = await profiles.pool.check(spec, data, self._limits)
        else:
            schema = self._schemas.get(soort.xsd) if soort.xsd else None
            found = findings_from_violations(
                validate_document(data, schema, self._limits), soort.xsd
            )
        return [Finding(f.rule, f.severity, f.text, f.location) for f in found]


#: what makes a berichtsoort's validation technically unavailable (503, not the sender's)
UNAVAILABLE = (SchemaError, ProfileUnavailable, SchematronError, ArtefactError)
