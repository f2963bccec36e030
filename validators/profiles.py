"""Validation profiles: a berichtsoort's ordered steps resolved to files, and checked.

:func:`resolve` turns a registry :class:`~digipoort.registry.ValidationProfile` into a
:class:`ProfileSpec` of absolute paths inside the artefacts directory (an
:class:`~validators.artefacts.ArtefactError` names the missing file). :func:`check_document`
runs a spec on a document, in this order, stopping at the first step that refuses:

1. the hardened parser (:func:`digipoort.xmlsafe.parse`): DTDs, entities, size, depth and
   element-count bombs are refused here, before any XSD or XSLT sees the document;
2. the XSD step: the main schema whose target namespace is the root element's namespace
   (UBL Invoice or CreditNote), streaming validation with line numbers;
3. each Schematron stylesheet: SVRL findings; ``fatal``/``error`` refuse, warnings do not.

:class:`Checker` keeps the compiled XSDs and stylesheets of one process (the worker
processes of :mod:`validators.pool` and the ``digipoort validate`` command each have one).
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from digipoort import xmlsafe
from digipoort.registry import ValidationProfile
from digipoort.xmlsafe import XmlLimits, XmlRejected
from validators.artefacts import locate
from validators.findings import Finding, findings_from_violations
from validators.schemas import SchemaError, SchemaRegistry, validate_document
from validators.schematron import SchematronEngine

__all__ = ["Checker", "ProfileSpec", "StepSpec", "check_document", "resolve"]


@dataclass(frozen=True)
class StepSpec:
    kind: str  # "xsd" | "schematron"
    label: str  # "ubl-2.1 2.1"
    root: Path  # the release folder
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ProfileSpec:
    """A profile with every file located; picklable (sent to worker processes)."""

    name: str
    label: str
    steps: tuple[StepSpec, ...]

    @property
    def xsd(self) -> StepSpec | None:
        return next((s for s in self.steps if s.kind == "xsd"), None)

    @property
    def schematron(self) -> tuple[StepSpec, ...]:
        return tuple(s for s in self.steps if s.kind == "schematron")


def resolve(profile: ValidationProfile, artefacts_dir: Path) -> ProfileSpec:
    """Locate every file of ``profile``; raises ArtefactError naming the first missing."""
    steps = []
    for step in profile.steps:
        files = tuple(locate(artefacts_dir, step.artefact, step.version, p) for p in step.paths)
        root = (artefacts_dir / step.artefact / step.version).resolve()
        steps.append(StepSpec(step.kind, step.label, root, files))
    return ProfileSpec(profile.name, profile.label, tuple(steps))


@dataclass
class Checker:
    """Compiled XSDs (by target namespace) and stylesheets of this process.

    Not thread-safe (lxml schemas and the Saxon executables are used by one thread)."""

    engine: SchematronEngine = field(default_factory=SchematronEngine)
    _schemas: dict[Path, tuple[str | None, etree.XMLSchema]] = field(default_factory=dict)

    def schema(self, step: StepSpec, path: Path) -> tuple[str | None, etree.XMLSchema]:
        cached = self._schemas.get(path)
        if cached is None:
            registry = SchemaRegistry([step.root])
            schema = registry.compile_path(path)
            cached = (_target_namespace(path), schema)
            self._schemas[path] = cached
        return cached

    def prepare(self, spec: ProfileSpec) -> None:
        """Compile everything the profile needs (raises SchemaError/SchematronError)."""
        for step in spec.steps:
            for path in step.paths:
                if step.kind == "xsd":
                    self.schema(step, path)
                else:
                    self.engine.compile(path)

    def check(self, spec: ProfileSpec, data: bytes, limits: XmlLimits) -> list[Finding]:
        return check_document(self, spec, data, limits)


def _target_namespace(path: Path) -> str | None:
    # The file already compiled as a schema (hardened parser included); read its root.
    for _event, el in etree.iterparse(
        str(path), events=("start",), resolve_entities=False, no_network=True, load_dtd=False
    ):
        namespace: str | None = el.get("targetNamespace")
        return namespace
    return None


def check_document(
    checker: Checker, spec: ProfileSpec, data: bytes, limits: XmlLimits
) -> list[Finding]:
    """All findings for ``data`` under ``spec`` (see the module documentation)."""
    try:
        tree = xmlsafe.parse(data, limits)
    except XmlRejected as exc:
        return [Finding(exc.code, "fatal", exc.message, f"regel {exc.line}" if exc.line else None)]
    xsd = spec.xsd
    if xsd is not None:
        root_ns = etree.QName(tree.getroot()).namespace
        chosen = None
        for path in xsd.paths:
            namespace, schema = checker.schema(xsd, path)
            if namespace == root_ns:
                chosen = schema
                break
        if chosen is None:
            wanted = ", ".join(p.name for p in xsd.paths)
            root = etree.QName(tree.getroot())
            return [
                Finding(
                    "XSD",
                    "fatal",
                    f"root element {{{root.namespace or ''}}}{root.localname} hoort bij geen"
                    f" van de schema's ({wanted})",
                    "regel 1",
                    xsd.label,
                )
            ]
        violations = validate_document(data, chosen, limits)
        if violations:
            return findings_from_violations(violations, xsd.label)
    findings: list[Finding] = []
    if spec.schematron:
        text = _as_text(data, tree.docinfo.encoding)
        for step in spec.schematron:
            for path in step.paths:
                findings += checker.engine.validate(path, text, step.label)
    return findings


def _as_text(data: bytes, encoding: str | None) -> str:
    """The document as text for Saxon (it already parsed with that encoding)."""
    name = encoding or "utf-8"
    try:
        codecs.lookup(name)
    except LookupError:
        name = "utf-8"
    text = data.decode(name)
    return text[1:] if text.startswith("\ufeff") else text


__all__ += ["SchemaError"]
