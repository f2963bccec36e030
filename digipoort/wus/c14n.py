"""Exclusive XML canonicalisation 1.0 (without comments), as WS-Security signs and verifies
it. Pure, no I/O.

Invariant: :func:`exc_c14n` returns exactly the Exc-C14N bytes of an element's subtree
(libxml2's; the pure-Python :func:`exc_c14n_python` only for a PrefixList holding
``#default``, which lxml drops) or raises ``WSSecurityError("c14n_failed")`` — what is
hashed is never an approximation that could verify where libxml2 would not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from lxml import etree

from .soap import XML_NS
from .wsprofile import fail


def exc_c14n(element: etree._Element, prefixes: Iterable[str] = ()) -> bytes:
    """Exclusive XML c14n 1.0 (without comments) of ``element``'s subtree."""
    prefix_list = list(prefixes)
    try:
        if "#default" in prefix_list:
            # lxml silently drops "#default" from inclusive_ns_prefixes; do it ourselves.
            return exc_c14n_python(element, prefix_list)
        return etree.tostring(
            element,
            method="c14n",
            exclusive=True,
            with_comments=False,
            inclusive_ns_prefixes=prefix_list or None,
        )
    except (etree.LxmlError, ValueError) as exc:
        raise fail("c14n_failed", f"canonicalization failed: {type(exc).__name__}") from None


_TEXT_ESCAPES: Final = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#xD;"})
_ATTR_ESCAPES: Final = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        '"': "&quot;",
        "\t": "&#x9;",
        "\n": "&#xA;",
        "\r": "&#xD;",
    }
)


def exc_c14n_python(apex: etree._Element, prefixes: Iterable[str]) -> bytes:
    """Pure-Python exclusive c14n, used only when the PrefixList contains ``#default``.

    Limitation: lxml does not expose attribute prefixes; if two in-scope prefixes bind
    the same namespace URI, a prefixed attribute may be rendered with the other prefix
    (which can only cause a false digest mismatch, never a false success).
    """
    inclusive = frozenset(None if p == "#default" else p for p in prefixes)
    out: list[str] = []
    _render_element(apex, {None: ""}, inclusive, out)
    return "".join(out).encode("utf-8")


def _attribute_prefix(nsmap: Mapping[str | None, str], namespace: str) -> str:
    if namespace == XML_NS:
        return "xml"
    for prefix, uri in nsmap.items():
        if prefix is not None and uri == namespace:
            return prefix
    raise ValueError("attribute namespace without prefix")


def _render_element(
    element: etree._Element,
    rendered: Mapping[str | None, str],
    inclusive: frozenset[str | None],
    out: list[str],
) -> None:
    nsmap: Mapping[str | None, str] = element.nsmap
    qname = etree.QName(element)
    used: dict[str | None, str] = {element.prefix: qname.namespace or ""}
    attributes: list[tuple[str, str, str, str]] = []
    for name, value in element.attrib.items():
        attr = etree.QName(name)
        if attr.namespace is None:
            attributes.append(("", attr.localname, attr.localname, str(value)))
            continue
        prefix = _attribute_prefix(nsmap, attr.namespace)
        attributes.append(
            (attr.namespace, attr.localname, f"{prefix}:{attr.localname}", str(value))
        )
        if prefix != "xml":
            used[prefix] = attr.namespace
    for listed in inclusive:
        if listed is None:
            used[None] = nsmap.get(None) or ""
        elif listed in nsmap:
            used[listed] = nsmap[listed]
    declare = {p: uri for p, uri in used.items() if rendered.get(p, "") != uri}
    tag = f"{element.prefix}:{qname.localname}" if element.prefix else qname.localname
    out.append("<" + tag)
    if None in declare:
        out.append(f' xmlns="{declare[None].translate(_ATTR_ESCAPES)}"')
    for prefix in sorted(p for p in declare if p is not None):
        out.append(f' xmlns:{prefix}="{declare[prefix].translate(_ATTR_ESCAPES)}"')
    for _ns, _local, name, value in sorted(attributes):
        out.append(f' {name}="{value.translate(_ATTR_ESCAPES)}"')
    out.append(">")
    out.append((element.text or "").translate(_TEXT_ESCAPES))
    child_rendered = {**rendered, **declare}
    for child in element:
        if isinstance(child.tag, str):
            _render_element(child, child_rendered, inclusive, out)
        elif isinstance(child, etree._ProcessingInstruction):
            data = child.text
            out.append(f"<?{child.target} {data}?>" if data else f"<?{child.target}?>")
        out.append((child.tail or "").translate(_TEXT_ESCAPES))
    out.append(f"</{tag}>")
