"""The one hardened XML parser everything uses.

No DTD is ever legitimate in these flows, so any DOCTYPE is refused outright — before the
document is built, so entity-expansion bombs ("billion laughs", quadratic blow-up) cost
nothing. Entities are never resolved, the network and the filesystem are never touched,
and size, depth and element count are bounded.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree


class XmlRejected(Exception):
    def __init__(self, code: str, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.code = code  # malformed | dtd_forbidden | too_deep | too_large | too_many_elements
        self.message = message
        self.line = line


@dataclass(frozen=True)
class XmlLimits:
    max_bytes: int = 20 * 1024 * 1024
    max_depth: int = 256
    max_elements: int = 2_000_000


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_pis=False,
        collect_ids=False,
    )


def _has_doctype(data: bytes) -> int | None:
    """Line of a DOCTYPE declaration in the prolog, if any (cheap scan before parsing).
    Handles UTF-8/ASCII-compatible encodings; UTF-16 documents are decoded first."""
    head = data
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        try:
            head = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            return None
    idx = head.find(b"<!DOCTYPE")
    if idx < 0:
        idx = head.upper().find(b"<!DOCTYPE")
    if idx < 0:
        return None
    return head.count(b"\n", 0, idx) + 1


def parse(data: bytes, limits: XmlLimits = XmlLimits()) -> etree._ElementTree:
    """Parse ``data`` safely or raise :class:`XmlRejected` (with a line where known)."""
    if len(data) > limits.max_bytes:
        raise XmlRejected("too_large", f"document larger than {limits.max_bytes} bytes")
    line = _has_doctype(data)
    if line is not None:
        raise XmlRejected("dtd_forbidden", "DOCTYPE/DTD is not allowed", line)
    parser = _parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        err_line = exc.lineno if exc.lineno else None
        if "Excessive depth" in str(exc.msg):
            raise XmlRejected("too_deep", "nesting too deep", err_line) from None
        raise XmlRejected("malformed", f"niet well-formed: {exc.msg}", err_line) from None
    except ValueError as exc:  # e.g. unicode strings with encoding declaration
        raise XmlRejected("malformed", f"niet well-formed: {exc}") from None
    tree = root.getroottree()
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise XmlRejected("dtd_forbidden", "DOCTYPE/DTD is not allowed", 1)
    _check_shape(root, limits)
    return tree


def _check_shape(root: etree._Element, limits: XmlLimits) -> None:
    depth = 0
    count = 0
    for event, el in etree.iterwalk(root, events=("start", "end")):
        if event == "start":
            depth += 1
            count += 1
            if depth > limits.max_depth:
                raise XmlRejected(
                    "too_deep", f"nesting deeper than {limits.max_depth}", el.sourceline
                )
            if count > limits.max_elements:
                raise XmlRejected(
                    "too_many_elements", f"more than {limits.max_elements} elements", el.sourceline
                )
        else:
            depth -= 1
        if isinstance(el, etree._Entity):
            raise XmlRejected("dtd_forbidden", "entity references are not allowed", el.sourceline)
