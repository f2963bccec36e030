"""XSD per berichtsoort: schemas compiled once, documents validated with line numbers.

**Finding schemas.** :class:`SchemaRegistry` looks a schema up by file name
(``"cbs-detailhandel.xsd"``) in the configured directories first (in the order given;
directories that do not exist are skipped), then in the packaged ``validators/xsd/``, so an
operator can put a newer version of a packaged schema in the config's ``xsd/`` directory.

**Loading them safely.** The XSD itself goes through :func:`digipoort.xmlsafe.parse` (no
DTD, no entities, bounded). ``xsd:import``/``xsd:include``/``xsd:redefine`` are loaded only
by :class:`_SearchDirResolver`, which serves files inside the search directories, each
checked by the hardened parser first, and refuses everything else (``http:``, other
schemes, paths outside the search directories, symlinks leading out of them) without ever
letting libxml2 fall back to its own loader. A refused import makes the schema fail to
load (:class:`SchemaError`), never silently validate less.

**Inert DTDs in schema files.** Some official schemas carry a DOCTYPE with only an internal
subset that nothing uses (OASIS UBL 2.1's copy of the W3C xmldsig schema declares entities
and a fixed ``xmlns:ds`` it also writes out). For *schema files only*,
:func:`strip_inert_doctype` blanks such a DOCTYPE (keeping the line count) when it has no
``SYSTEM``/``PUBLIC`` identifier and the document references no entity; any other DTD is
still refused by the hardened parser. Documents being validated never get this treatment.

**Validating.** :func:`validate_document` checks well-formedness and limits with the
hardened parser, then validates against the XSD *while re-parsing the bytes* with lxml's
streaming XSD validation (linear time). Tree validation (``XMLSchema.validate``) is not
used: lxml computes an XPath-like location for every error by walking all preceding
siblings, so a crafted document with a million invalid siblings costs an hour of CPU.
Streaming validation reports no line numbers, so for an invalid document a second pass
feeds the bytes one line at a time from the first error on, and attributes each error to
the line being fed when libxml2 reported it: the line of the end tag for a bad value
(normally the element's own line), of the offending element for an unexpected element,
of the parent's end tag for a missing child. The first pass stops at the first error, the
second after ``max_violations``, so time and memory stay linear in the document whatever
it contains (the second pass costs about 3 µs per line after the first error).

**Threads.** Compiled ``XMLSchema`` objects are cached per registry and must not be used
from several threads at once (lxml validators are not thread-safe). The gateway validates
on one asyncio event loop thread, so that holds; give each thread its own
:class:`SchemaRegistry` if that ever changes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from lxml import etree

from digipoort import xmlsafe
from digipoort.xmlsafe import DEFAULT_LIMITS, XmlLimits, XmlRejected
from validators.content import Violation

__all__ = [
    "MAX_VIOLATIONS",
    "PACKAGED",
    "SchemaError",
    "SchemaNotFound",
    "SchemaRegistry",
    "validate_document",
]

#: The packaged schema directory, always searched last.
PACKAGED: Final = Path(__file__).resolve().parent / "xsd"

#: Violations reported per document at most.
MAX_VIOLATIONS: Final = 100

#: Limits for schema files themselves.
SCHEMA_LIMITS: Final = XmlLimits(max_bytes=8 * 1024 * 1024, max_elements=200_000)

_SCHEME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_XML_ERR_ERROR: Final[int] = cast(Any, etree).ErrorLevels.ERROR
_DOMAIN_SCHEMASV: Final[int] = cast(Any, etree).ErrorDomains.SCHEMASV  # schema validity


class SchemaError(Exception):
    """A schema could not be found or compiled: a technical problem (VAS400), not the
    sender's fault."""


class SchemaNotFound(SchemaError, LookupError):
    """No search directory holds a schema of that name."""


class SchemaRegistry:
    """Schemas by file name from the search directories, each compiled once.

    See the module documentation for the search order, import rules and thread safety.
    """

    def __init__(
        self, search_dirs: Sequence[Path] = (), *, limits: XmlLimits = SCHEMA_LIMITS
    ) -> None:
        dirs: list[Path] = []
        for d in [*search_dirs, PACKAGED]:
            resolved = Path(d).resolve()
            if resolved not in dirs:
                dirs.append(resolved)
        self._dirs: tuple[Path, ...] = tuple(dirs)
        self._limits = limits
        self._cache: dict[str, etree.XMLSchema] = {}

    @property
    def search_dirs(self) -> tuple[Path, ...]:
        """Directories searched, in order (resolved; the packaged directory last)."""
        return self._dirs

    def available(self) -> list[str]:
        """File names of all ``*.xsd`` files in the search directories, sorted."""
        names = {p.name for d in self._dirs if d.is_dir() for p in d.glob("*.xsd") if p.is_file()}
        return sorted(names)

    def find(self, name: str) -> Path:
        """Path of the schema file called ``name`` (a bare file name), first match wins."""
        if not _is_plain_file_name(name):
            raise SchemaNotFound(f"schema name {name!r} is not a plain file name")
        for d in self._dirs:
            candidate = d / name
            if candidate.is_file() and _inside(candidate.resolve(), d):
                return candidate
        raise SchemaNotFound(f"schema {name!r} not found in {', '.join(map(str, self._dirs))}")

    def get(self, name: str) -> etree.XMLSchema:
        """The compiled schema ``name``; compiled on first use, then cached.

        Raises :class:`SchemaNotFound` or :class:`SchemaError` (failures are not cached,
        so a fixed file is picked up on the next call).
        """
        schema = self._cache.get(name)
        if schema is None:
            schema = self._compile(self.find(name))
            self._cache[name] = schema
        return schema

    def compile_path(self, path: Path) -> etree.XMLSchema:
        """Compile the schema file ``path`` (inside a search directory; its imports are
        served from the search directories). Not cached: callers keep the result."""
        resolved = path.resolve()
        if not any(_inside(resolved, d) for d in self._dirs) or not resolved.is_file():
            raise SchemaNotFound(f"schema {path} is not a file in the search directories")
        return self._compile(resolved)

    def _compile(self, path: Path) -> etree.XMLSchema:
        resolver = _SearchDirResolver(self._dirs, self._limits)
        try:
            data = strip_inert_doctype(path.read_bytes())
        except OSError as exc:
            raise SchemaError(f"schema {path.name}: cannot read {path}: {exc}") from None
        try:
            tree = xmlsafe.parse(data, self._limits, base_url=str(path), resolver=resolver)
        except XmlRejected as exc:
            raise SchemaError(f"schema {path.name} refused: {exc}") from None
        try:
            schema = etree.XMLSchema(tree)
        except etree.XMLSchemaParseError as exc:
            raise SchemaError(f"schema {path.name}: {exc}{resolver.explain()}") from None
        if resolver.refused:  # belt and braces: libxml2 treats a failed import as an error
            raise SchemaError(f"schema {path.name}: imports refused{resolver.explain()}")
        return schema


class _SearchDirResolver(etree.Resolver):
    """Serves ``xsd:import``/``include`` targets from the search directories only.

    It never returns ``None`` (which would let libxml2 load the URL itself) and never
    raises (lxml would stash the exception in the parser context): a refused URL gets an
    empty document, which makes the import fail, and is remembered for the error message.
    """

    def __init__(self, dirs: Sequence[Path], limits: XmlLimits) -> None:
        super().__init__()
        self._dirs = tuple(dirs)
        self._limits = limits
        self.refused: list[str] = []

    def explain(self) -> str:
        return "; refused: " + "; ".join(self.refused) if self.refused else ""

    # lxml-stubs 0.5 leave out the ``context`` argument lxml passes.
    def resolve(  # type: ignore[override]
        self, system_url: str | None, public_id: str | None, context: Any
    ) -> Any:
        url = system_url or ""
        try:
            path = self._locate(url)
            if path is None:
                self.refused.append(f"{url!r} is not a schema file in the search directories")
                return self.resolve_string(b"", context, base_url=None)
            data = strip_inert_doctype(path.read_bytes())
            xmlsafe.parse(data, self._limits)  # libxml2 re-parses it with its own options
        except (OSError, RuntimeError, ValueError, XmlRejected) as exc:
            self.refused.append(f"{url!r}: {exc}")
            return self.resolve_string(b"", context, base_url=None)
        return self.resolve_string(data, context, base_url=str(path))

    def _locate(self, url: str) -> Path | None:
        if not url or "\x00" in url:
            return None
        if url.lower().startswith("file:"):
            parts = urlsplit(url)
            if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
                return None
            raw = url2pathname(parts.path)
        elif _SCHEME.match(url):
            return None  # http:, https:, ftp:, ... are never fetched
        else:
            raw = url
        for text in dict.fromkeys((raw, unquote(raw))):
            found = self._locate_path(Path(text))
            if found is not None:
                return found
        return None

    def _locate_path(self, path: Path) -> Path | None:
        if path.is_absolute():
            absolute = path.resolve()
            home = next((d for d in self._dirs if _inside(absolute, d)), None)
            if home is None:
                return None
            relative = absolute.relative_to(home)
            order = [home, *(d for d in self._dirs if d != home)]
        else:
            relative, order = path, list(self._dirs)
        for d in order:
            candidate = (d / relative).resolve()
            if _inside(candidate, d) and candidate.is_file():
                return candidate
        return None


_INERT_DOCTYPE: Final = re.compile(rb"<!DOCTYPE\s+[A-Za-z_][\w.:-]*\s*\[[^\]]*\]\s*>")
_ENTITY_REF: Final = re.compile(rb"&(?!(?:lt|gt|amp|quot|apos|#[0-9]+|#x[0-9A-Fa-f]+);)")


def strip_inert_doctype(data: bytes) -> bytes:
    """``data`` with an unused internal-subset-only DOCTYPE blanked (schema files only)."""
    match = _INERT_DOCTYPE.search(data, 0, 64 * 1024)
    if match is None:
        return data
    rest = data[: match.start()] + data[match.end() :]
    if _ENTITY_REF.search(rest) or b"<!DOCTYPE" in rest:
        return data
    blank = b"\n" * match.group(0).count(b"\n")
    return data[: match.start()] + blank + data[match.end() :]


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or path.is_relative_to(directory)


def _is_plain_file_name(name: str) -> bool:
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\x00")
        and Path(name).name == name
    )


# --------------------------------------------------------------------------- validation


def validate_document(
    data: bytes,
    schema: etree.XMLSchema | None,
    limits: XmlLimits = DEFAULT_LIMITS,
    *,
    max_violations: int = MAX_VIOLATIONS,
) -> list[Violation]:
    """All reasons to refuse ``data`` (empty when it is acceptable), at most ``max_violations``.

    First the hardened parser: a refusal gives one violation whose code is the
    :class:`~digipoort.xmlsafe.XmlRejected` code (``malformed``, ``dtd_forbidden``,
    ``too_deep``, ``too_large``, ``too_many_elements``). Then, if ``schema`` is given, the
    XSD: one ``schema`` violation per error, each with its line.
    """
    try:
        xmlsafe.parse(data, limits)
    except XmlRejected as exc:
        return [Violation(exc.code, exc.message, exc.line)]
    if schema is None:
        return []
    cap = max(1, max_violations)
    first = _stream_validate(data, schema, max_violations=1)
    if first.first_error_at is None and not first.violations:
        return []  # the common case: valid after one streaming pass
    second = _stream_validate(
        data, schema, max_violations=cap, lines_from=first.first_error_at or 0
    )
    return second.violations or first.violations  # (the passes cannot disagree; be safe)


def _violation_code(entry: Any) -> str:
    return "schema" if entry.domain == _DOMAIN_SCHEMASV else "malformed"


class _Enough(Exception):
    pass


class _Feed:
    """The file-like source for ``iterparse``: hands the document out piece by piece and,
    before each piece, collects the errors the previous piece produced.

    From byte offset ``lines_from`` on (if given) a piece never spans a line break, so each
    error gets the line libxml2 was parsing when it reported it; before that offset, and
    without ``lines_from``, pieces are as large as ``iterparse`` asks for.
    """

    def __init__(self, data: bytes, *, max_violations: int, lines_from: int | None) -> None:
        self._data = data
        self._max = max_violations
        self._lines_from = lines_from
        self._pos = 0
        self._piece_start = 0
        self._piece_line = 1
        self._next_line = 1
        self._seen = 0
        self.parser: Any = None
        self.violations: list[Violation] = []
        self.first_error_at: int | None = None

    def read(self, size: int = -1) -> bytes:
        self.collect()
        data, start = self._data, self._pos
        if start >= len(data):
            return b""
        stop = len(data) if size is None or size < 0 else min(len(data), start + max(size, 1))
        if self._lines_from is not None:
            if start < self._lines_from:
                stop = min(stop, self._lines_from)
            else:
                newline = data.find(b"\n", start, stop)
                stop = stop if newline < 0 else newline + 1
        self._piece_start, self._piece_line = start, self._next_line
        self._next_line += data.count(b"\n", start, stop)
        self._pos = stop
        return data[start:stop]

    def collect(self) -> None:
        if self.parser is None:
            return
        log = self.parser.error_log  # a copy; at most ~max_violations entries
        if len(log) == self._seen:
            return
        fresh: list[Any] = list(log)[self._seen :]
        self._seen += len(fresh)
        for entry in fresh:
            if entry.level < _XML_ERR_ERROR:
                continue
            if self.first_error_at is None:
                self.first_error_at = self._piece_start
            line = entry.line if entry.line and entry.line > 0 else self._piece_line
            self.violations.append(Violation(_violation_code(entry), entry.message, line))
            if len(self.violations) >= self._max:
                raise _Enough


def _stream_validate(
    data: bytes, schema: etree.XMLSchema, *, max_violations: int, lines_from: int | None = None
) -> _Feed:
    """Streaming validation (linear time), stopping after ``max_violations`` errors."""
    feed = _Feed(data, max_violations=max_violations, lines_from=lines_from)
    # The bytes already passed xmlsafe.parse (no DOCTYPE, within limits); same options here.
    feed.parser = cast(Any, etree).iterparse(
        feed,
        events=(),
        schema=schema,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
    )
    try:
        for _ in feed.parser:
            pass
        feed.collect()
    except _Enough:
        pass
    except etree.XMLSyntaxError as exc:  # raised at the end when the document is invalid
        try:
            feed.collect()
        except _Enough:
            pass
        if not feed.violations:
            details: Any = exc
            line = details.lineno if details.lineno and details.lineno > 0 else None
            feed.violations.append(Violation("schema", details.msg or str(exc), line))
    return feed
