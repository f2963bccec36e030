"""The one hardened XML parser: bytes in, an lxml tree out, or a clear refusal.

Every piece of XML the gateway reads (SOAP envelopes, payload documents, XSD files) goes
through :func:`parse`. The defences, in the order they run:

1. **Size.** ``len(data) > limits.max_bytes`` is refused before lxml sees a byte.
2. **No DTD, ever.** A DTD is never legitimate in these flows, so any ``<!DOCTYPE`` is
   refused. A probe parse with a parser *target* stops at the DOCTYPE's first SAX event,
   before libxml2 reads the internal subset, or at the root element's start tag, whichever
   comes first. It costs only the prolog, in any encoding libxml2 understands (UTF-16 too),
   and no entity (billion laughs, quadratic blow-up, XXE ``SYSTEM "file:///..."``) is ever
   declared, let alone expanded or fetched.
3. **Hardened libxml2 options** for the tree parse, as a second line of defence:
   ``resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
   huge_tree=False``. (libxml2 2.14 also refuses entity amplification on its own.)
   ``huge_tree=False`` keeps libxml2's own limits: nesting depth 256, text nodes and
   attribute values 10 MB, names 50 000 characters.
4. **Element count and depth.** If the document *could* hold more than
   ``limits.max_elements`` elements (it has more ``<`` bytes than that), the tree is built
   by a pull parser that counts start events and stops as soon as the limit is passed, so a
   flat ``<a/><a/>...`` bomb never becomes a huge tree. Every tree is then checked exactly
   with compiled XPath, which runs in C: element count, depth (when ``limits.max_depth`` is
   below libxml2's own 256) and, once more, no DTD. The ``<``-byte estimate holds for every
   encoding libxml2 reads here except UTF-7 (where ``<`` may be ``+ADw-``); such a document
   is still refused exactly, only after its tree (bounded by ``max_bytes``) was built.

XInclude is never processed and ``xsi:schemaLocation`` hints are never followed (lxml's
XSD validation does not load them), so parsing plus validation does no I/O at all.

Thread safety: :func:`parse` creates a fresh ``XMLParser`` per call (lxml parsers must not
be shared between threads); the module-level compiled ``XPath`` objects are thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal, cast

from lxml import etree

__all__ = [
    "DEFAULT_LIMITS",
    "LIBXML2_MAX_DEPTH",
    "RejectCode",
    "XmlLimits",
    "XmlRejected",
    "check_attributes",
    "check_namespace_declarations",
    "parse",
]

RejectCode = Literal[
    "malformed",
    "dtd_forbidden",
    "too_deep",
    "too_large",
    "too_many_elements",
    "too_many_namespaces",
    "too_many_attributes",
]

#: Nesting depth libxml2 enforces itself when ``huge_tree`` is off (the root is depth 1).
LIBXML2_MAX_DEPTH: Final = 256

# Bytes handed to the pull parser per feed() when the element count must be watched.
_FEED_CHUNK: Final = 64 * 1024

# libxml2 errors (xmlParserErrors) that mean "a parser resource limit was hit".
_LIMIT_ERRORS: Final[frozenset[int]] = frozenset(
    {cast(Any, etree).ErrorTypes.ERR_RESOURCE_LIMIT, cast(Any, etree).ErrorTypes.ERR_NAME_TOO_LONG}
)


class XmlRejected(Exception):
    """The document was refused. ``code`` is machine-readable, ``message`` human-readable.

    ``line`` is the 1-based line where the problem was found, when known.
    """

    code: RejectCode
    message: str
    line: int | None

    def __init__(self, code: RejectCode, message: str, line: int | None = None) -> None:
        super().__init__(code, message, line)
        self.code = code
        self.message = message
        self.line = line

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line is not None else ""
        return f"{self.code}: {self.message}{where}"


@dataclass(frozen=True)
class XmlLimits:
    """Resource limits for one document.

    ``max_depth`` counts the root element as depth 1. libxml2 refuses nesting beyond
    :data:`LIBXML2_MAX_DEPTH` on its own, so a larger value behaves like 256.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_depth: int = LIBXML2_MAX_DEPTH
    max_elements: int = 2_000_000
    #: ``xmlns`` / ``xmlns:p`` declarations in the whole document.
    max_namespace_declarations: int = 1024
    #: Attributes on any one element (namespace declarations not counted).
    max_attributes: int = 1024

    def __post_init__(self) -> None:
        for name in (
            "max_bytes",
            "max_depth",
            "max_elements",
            "max_namespace_declarations",
            "max_attributes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"XmlLimits.{name} must be a positive integer, not {value!r}")


DEFAULT_LIMITS: Final = XmlLimits()


def parse(
    data: bytes,
    limits: XmlLimits = DEFAULT_LIMITS,
    *,
    base_url: str | None = None,
    resolver: etree.Resolver | None = None,
) -> etree._ElementTree:
    """Parse ``data`` into a tree, or raise :class:`XmlRejected`.

    ``base_url`` names the document (relative references in it, e.g. ``xsd:import``, are
    resolved against it); ``resolver`` is registered on the parser, so that a schema built
    from the returned tree loads its imports only through it (see ``validators.schemas``).
    Neither is needed for ordinary documents.

    Never raises anything but :class:`XmlRejected` for bad input (``TypeError`` if ``data``
    is not ``bytes``).
    """
    if not isinstance(data, bytes):
        raise TypeError(f"xmlsafe.parse() needs bytes, not {type(data).__name__}")
    if len(data) > limits.max_bytes:
        raise XmlRejected(
            "too_large", f"document is {len(data)} bytes; the limit is {limits.max_bytes} bytes"
        )
    _refuse_doctype(data)
    check_namespace_declarations(data, limits.max_namespace_declarations)
    try:
        if data.count(b"<") <= limits.max_elements:
            tree = _parse_whole(data, base_url, resolver)
        else:
            tree = _parse_counting(data, limits.max_elements, base_url, resolver)
    except etree.XMLSyntaxError as exc:
        raise _from_syntax_error(exc, limits) from None
    except etree.LxmlError as exc:  # not seen in practice; never let lxml's types escape
        raise XmlRejected("malformed", str(exc) or type(exc).__name__) from None
    _check_tree(tree, limits)
    return tree


# --------------------------------------------------------------------------- bounds before c14n
#
# Canonicalization (XML-DSig, exclusive c14n) renders, for every element, the namespaces in
# scope: its cost grows with elements x declarations, so 12 000 declarations in a 290 KB
# envelope cost seconds of CPU. These two bounds make that cost small before any c14n runs;
# the SOAP parser (digipoort/wus/soap.py) applies them with tighter limits.


class _CountNamespaces:
    """Parser target: counts namespace declarations, stops once past the limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0

    def start_ns(self, prefix: object, uri: object) -> None:
        self.seen += 1
        if self.seen > self.limit:
            raise _TooManyNamespaces

    def close(self) -> int:
        return self.seen


class _TooManyNamespaces(Exception):
    pass


def _ascii_compatible(data: bytes) -> bool:
    return data[:2] not in (b"\xfe\xff", b"\xff\xfe") and b"\x00" not in data[:4]


def check_namespace_declarations(data: bytes, limit: int) -> None:
    """Refuse a document with more than ``limit`` namespace declarations (XmlRejected
    ``too_many_namespaces``), before any tree is built. Costs one ``bytes.count`` unless
    the document could hold that many (then one SAX pass that builds no tree)."""
    if _ascii_compatible(data) and data.count(b"xmlns") <= limit:
        return
    try:
        etree.fromstring(data, _hardened_parser(target=_CountNamespaces(limit)))
    except _TooManyNamespaces:
        raise XmlRejected(
            "too_many_namespaces", f"more than {limit} namespace declarations"
        ) from None
    except etree.LxmlError:
        return  # not well-formed: the tree parse reports it


@lru_cache(maxsize=16)
def _element_with_attributes_over(limit: int) -> etree.XPath:
    return etree.XPath(f"(//*[count(@*) > {int(limit)}])[1]")


def check_attributes(tree: etree._Element | etree._ElementTree, limit: int) -> None:
    """Refuse a tree with an element carrying more than ``limit`` attributes (XmlRejected
    ``too_many_attributes``); one XPath pass in C."""
    found: Any = _element_with_attributes_over(limit)(tree)
    if found:
        raise XmlRejected(
            "too_many_attributes",
            f"an element has more than {limit} attributes",
            found[0].sourceline,
        )


# --------------------------------------------------------------------------- parsers


def _hardened_parser(*, target: object | None = None) -> etree.XMLParser:
    options: dict[str, Any] = {
        "resolve_entities": False,
        "no_network": True,
        "load_dtd": False,
        "dtd_validation": False,
        "huge_tree": False,
    }
    if target is not None:
        options["target"] = target
    return etree.XMLParser(**options)


class _DoctypeFound(Exception):
    pass


class _RootReached(Exception):
    pass


class _ProbeTarget:
    """Parser target that ends the probe at the DOCTYPE or at the root element.

    lxml only wires up the SAX callbacks a target defines, so nothing else reaches Python.
    """

    def doctype(self, name: object, pubid: object, system: object) -> None:
        raise _DoctypeFound

    def start(self, tag: object, attrib: object) -> None:
        raise _RootReached

    def close(self) -> None:
        return None


def _refuse_doctype(data: bytes) -> None:
    try:
        etree.fromstring(data, _hardened_parser(target=_ProbeTarget()))
    except _RootReached:
        return
    except _DoctypeFound:
        raise XmlRejected(
            "dtd_forbidden",
            "a DOCTYPE declaration (DTD) is not allowed in this document",
            _doctype_line(data),
        ) from None
    except etree.XMLSyntaxError as exc:
        raise _from_syntax_error(exc, DEFAULT_LIMITS) from None
    except etree.LxmlError as exc:
        raise XmlRejected("malformed", str(exc) or type(exc).__name__) from None
    # The probe ended without a root element; the tree parse below reports why.


def _doctype_line(data: bytes) -> int | None:
    """Best-effort line of the DOCTYPE (the probe target is not told where it is)."""
    if data[:2] in (b"\xfe\xff", b"\x00<"):
        encoding = "utf-16-be"
    elif data[:2] in (b"\xff\xfe", b"<\x00"):
        encoding = "utf-16-le"
    else:
        encoding = "utf-8"  # any ASCII-compatible encoding
    at = data.find("<!DOCTYPE".encode(encoding))
    if at < 0:
        return None
    return data[:at].decode(encoding, errors="replace").count("\n") + 1


def _parse_whole(
    data: bytes, base_url: str | None, resolver: etree.Resolver | None
) -> etree._ElementTree:
    parser = _hardened_parser()
    if resolver is not None:
        parser.resolvers.add(resolver)
    if base_url is None:
        root = etree.fromstring(data, parser)
    else:
        root = etree.fromstring(data, parser, base_url=base_url)
    return root.getroottree()


def _parse_counting(
    data: bytes, max_elements: int, base_url: str | None, resolver: etree.Resolver | None
) -> etree._ElementTree:
    """Build the tree chunk by chunk, stopping once more than ``max_elements`` started."""
    parser = etree.XMLPullParser(
        events=("start",),
        base_url=base_url,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
    )
    if resolver is not None:
        parser.resolvers.add(resolver)
    seen = 0
    for offset in range(0, len(data), _FEED_CHUNK):
        parser.feed(data[offset : offset + _FEED_CHUNK])
        events = list(parser.read_events())
        if seen + len(events) > max_elements:
            element: Any = events[max_elements - seen][1]
            raise XmlRejected(
                "too_many_elements",
                f"document has more than {max_elements} elements",
                element.sourceline,
            )
        seen += len(events)
    root = parser.close()
    return root.getroottree()


# --------------------------------------------------------------------------- checks

_COUNT_ELEMENTS: Final = etree.XPath("count(//*)")
_NTH_ELEMENT: Final = etree.XPath("(//*)[$n]")


@lru_cache(maxsize=16)
def _first_element_deeper_than(max_depth: int) -> etree.XPath:
    return etree.XPath("(/" + "/".join(["*"] * (max_depth + 1)) + ")[1]")


def _check_tree(tree: etree._ElementTree, limits: XmlLimits) -> None:
    docinfo: Any = tree.docinfo
    if docinfo.internalDTD is not None or docinfo.externalDTD is not None or docinfo.doctype:
        # Unreachable while the probe works; kept as a second line of defence.
        raise XmlRejected("dtd_forbidden", "a DOCTYPE declaration (DTD) is not allowed")
    count = int(cast(float, _COUNT_ELEMENTS(tree)))
    if count > limits.max_elements:
        found: Any = _NTH_ELEMENT(tree, n=limits.max_elements + 1)
        raise XmlRejected(
            "too_many_elements",
            f"document has {count} elements; the limit is {limits.max_elements}",
            found[0].sourceline if found else None,
        )
    check_attributes(tree, limits.max_attributes)
    if limits.max_depth < LIBXML2_MAX_DEPTH:
        deeper: Any = _first_element_deeper_than(limits.max_depth)(tree)
        if deeper:
            raise XmlRejected(
                "too_deep",
                f"elements are nested more than {limits.max_depth} levels deep",
                deeper[0].sourceline,
            )


def _from_syntax_error(exc: etree.XMLSyntaxError, limits: XmlLimits) -> XmlRejected:
    details: Any = exc
    lineno = details.lineno
    line = lineno if isinstance(lineno, int) and lineno > 0 else None
    message = " ".join(str(details.msg or exc).split()) or "not well-formed XML"
    if details.code in _LIMIT_ERRORS:
        if "depth" in message.lower():
            depth = min(limits.max_depth, LIBXML2_MAX_DEPTH)
            return XmlRejected(
                "too_deep", f"elements are nested more than {depth} levels deep", line
            )
        return XmlRejected("too_large", f"parser size limit exceeded: {message}", line)
    return XmlRejected("malformed", message, line)
