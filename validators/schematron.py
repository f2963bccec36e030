"""Schematron with SaxonC-HE (``saxonche``): compiled XSLT rules applied, SVRL parsed.

The official rule sets (CEN's EN 16931 for UBL, SI-UBL 2.0) are published as compiled
Schematron: XSLT 2.0 stylesheets that write SVRL. :class:`SchematronEngine` compiles each
stylesheet once and keeps it; :func:`parse_svrl` turns the report into
:class:`~validators.findings.Finding` values: ``svrl:failed-assert`` and
``svrl:successful-report`` with their ``flag`` (``fatal``/``error`` refuse, ``warning``
does not), the rule id and the location XPath.

**One processor per process.** A ``PySaxonProcessor`` wraps a GraalVM isolate: create one
per process (:func:`processor`) and never release it (saxonche cannot create another one
reliably after that). ``saxonche`` holds the GIL while it transforms, so threads do not add
throughput; the gateway runs this module in worker *processes*
(:mod:`validators.pool`), each with its own processor and compiled stylesheets.

**No external resources.** The processor is configured with Saxon's ``allowedProtocols``
feature set to the empty string before anything is compiled: ``document()``, ``doc()``,
``unparsed-text()``, ``collection()``, ``xsl:include``/``xsl:import`` of URIs all fail
with "access prohibited", for ``file:``, ``http:`` and every other scheme. Stylesheets
are read by Python and compiled from text, documents are handed over as text without a
base URI, so nothing needs resolving. A stylesheet that imports other modules therefore
does not compile (the official releases are single files).

**Lean SVRL.** Compiled Schematron writes an ``svrl:fired-rule`` element for every node each
rule fires on: for a 21 KB invoice 90 % of the report, and about 40 % of the time spent
applying the rules (building and serialising it, then parsing it again). The gateway only
reads failed asserts and successful reports, so :func:`lean_stylesheet` removes the
``svrl:fired-rule`` instructions from the stylesheet (parsed with the hardened parser, a
structural edit, not text substitution) before compiling. Asserts, reports, their flags,
texts and locations are untouched; CEN's conformance tests run against the lean form.

The document has already passed :func:`digipoort.xmlsafe.parse` (no DTD, bounded) when it
gets here, so Saxon's own parser never sees an entity declaration.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from lxml import etree

from digipoort import xmlsafe
from digipoort.xmlsafe import XmlLimits
from validators.findings import Finding, compact_location, rule_id_of

__all__ = [
    "ALLOWED_PROTOCOLS",
    "SVRL_LIMITS",
    "SchematronEngine",
    "SchematronError",
    "lean_stylesheet",
    "parse_svrl",
    "processor",
]

#: Saxon configuration feature: which URI schemes Saxon itself may open ("" = none).
ALLOWED_PROTOCOLS: Final = "http://saxon.sf.net/feature/allowedProtocols"
SVRL: Final = "http://purl.oclc.org/dsdl/svrl"
#: SVRL reports are our own output, but still bounded (a 1 MB invoice fires many rules).
SVRL_LIMITS: Final = XmlLimits(
    max_bytes=512 * 1024 * 1024, max_elements=20_000_000, max_namespace_declarations=100_000
)
#: Stylesheets up to this size are compiled.
MAX_STYLESHEET_BYTES: Final = 64 * 1024 * 1024
# (compiled Schematron repeats xmlns:svrl on every SVRL instruction: thousands of them)
STYLESHEET_LIMITS: Final = XmlLimits(
    max_bytes=MAX_STYLESHEET_BYTES, max_elements=5_000_000, max_namespace_declarations=1_000_000
)

_lock = threading.Lock()
_processor: Any = None


class SchematronError(Exception):
    """A stylesheet cannot be read or compiled, or the transformation failed."""


def processor() -> Any:
    """This process's ``PySaxonProcessor`` (created once, never released), with every
    external resource access switched off."""
    global _processor
    with _lock:
        if _processor is None:
            from saxonche import PySaxonProcessor

            proc = PySaxonProcessor(license=False)
            proc.set_configuration_property(ALLOWED_PROTOCOLS, "")
            _processor = proc
        return _processor


@dataclass(frozen=True)
class _Key:
    path: Path
    mtime_ns: int
    size: int


class SchematronEngine:
    """Compiled stylesheets by path, compiled once (recompiled only if the file changed)."""

    def __init__(self) -> None:
        self._compiled: dict[Path, tuple[_Key, Any]] = {}

    def _key(self, path: Path) -> _Key:
        try:
            st = path.stat()
        except OSError as exc:
            raise SchematronError(f"stylesheet {path}: {exc.strerror or exc}") from None
        return _Key(path, st.st_mtime_ns, st.st_size)

    def compile(self, path: Path) -> Any:
        """The compiled stylesheet at ``path`` (an ``PyXsltExecutable``)."""
        key = self._key(path)
        cached = self._compiled.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        if key.size > MAX_STYLESHEET_BYTES:
            raise SchematronError(f"stylesheet {path}: larger than {MAX_STYLESHEET_BYTES} bytes")
        try:
            text = lean_stylesheet(path.read_bytes())
        except OSError as exc:
            raise SchematronError(f"stylesheet {path}: cannot read: {exc}") from None
        except xmlsafe.XmlRejected as exc:
            raise SchematronError(f"stylesheet {path} refused: {exc}") from None
        proc = processor()
        try:
            executable = proc.new_xslt30_processor().compile_stylesheet(stylesheet_text=text)
        except Exception as exc:  # saxonche raises PySaxonApiError
            message = f"stylesheet {path} does not compile: {_first_line(exc)}"
            raise SchematronError(message) from None
        if executable is None:
            raise SchematronError(f"stylesheet {path} does not compile")
        self._compiled[path] = (key, executable)
        return executable

    def svrl(self, path: Path, text: str) -> str:
        """The SVRL report of stylesheet ``path`` for the document ``text``."""
        executable = self.compile(path)
        proc = processor()
        try:
            node = proc.parse_xml(xml_text=text)
            result = executable.transform_to_string(xdm_node=node)
        except Exception as exc:
            raise SchematronError(f"{path.name}: {_first_line(exc)}") from None
        if result is None:
            raise SchematronError(f"{path.name}: no SVRL output")
        return str(result)

    def validate(self, path: Path, text: str, step: str | None = None) -> list[Finding]:
        return parse_svrl(self.svrl(path, text), step)


def lean_stylesheet(data: bytes) -> str:
    """The stylesheet without its ``svrl:fired-rule`` instructions (see above)."""
    tree = xmlsafe.parse(data, STYLESHEET_LIMITS)
    for el in list(tree.iter(f"{{{SVRL}}}fired-rule")):
        parent = el.getparent()
        if parent is not None:
            _remove_keeping_tail(el, parent)
    return str(etree.tostring(tree, encoding="unicode"))


def _remove_keeping_tail(el: etree._Element, parent: etree._Element) -> None:
    if el.tail and el.tail.strip():
        previous = el.getprevious()
        if previous is not None:
            previous.tail = (previous.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def parse_svrl(report: str | bytes, step: str | None = None) -> list[Finding]:
    """Failed asserts and successful reports of an SVRL document, in document order."""
    data = report.encode("utf-8") if isinstance(report, str) else report
    try:
        tree = xmlsafe.parse(data, SVRL_LIMITS)
    except xmlsafe.XmlRejected as exc:
        raise SchematronError(f"SVRL report refused: {exc}") from None
    findings: list[Finding] = []
    for el in tree.iter(f"{{{SVRL}}}failed-assert", f"{{{SVRL}}}successful-report"):
        text = "".join(el.findtext(f"{{{SVRL}}}text") or "").strip()
        rule, rest = rule_id_of(text, el.get("id"))
        flag = (el.get("flag") or ("error" if _is_assert(el) else "info")).lower()
        location = el.get("location")
        findings.append(
            Finding(rule, flag, rest, compact_location(location) if location else None, step)
        )
    return findings


def _is_assert(el: etree._Element) -> bool:
    return el.tag == f"{{{SVRL}}}failed-assert"
