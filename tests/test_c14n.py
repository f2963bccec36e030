"""Exclusive c14n (digipoort.wus.c14n): the pure-Python rendering used for a PrefixList
holding ``#default`` agrees with libxml2 on generated documents."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from digipoort.wus.c14n import exc_c14n_python


@st.composite
def _xml_documents(draw: st.DrawFn) -> str:
    uris = {"a": ["urn:a", "urn:a2"], "b": ["urn:b", "urn:b2"], "c": ["urn:c"]}
    texts = st.text(alphabet="xy &<>\"'\t\n\r\u00e9", max_size=4)

    def escape(value: str) -> str:
        return (
            value.replace("&", "&amp;")
            .replace("<", "&lt;")
            .replace(">", "&gt;")
            .replace('"', "&quot;")
            .replace("\r", "&#13;")
            .replace("\t", "&#9;")
            .replace("\n", "&#10;")
        )

    def element(depth: int) -> str:
        prefix = draw(st.sampled_from([None, "a", "b", "c"]))
        tag = f"{prefix}:e{depth}" if prefix else f"e{depth}"
        parts = [tag]
        for declared in draw(st.lists(st.sampled_from(["a", "b", ""]), max_size=2, unique=True)):
            if declared:
                parts.append(f'xmlns:{declared}="{draw(st.sampled_from(uris[declared]))}"')
            else:
                parts.append(f'xmlns="{draw(st.sampled_from(["urn:d1", "urn:d2", ""]))}"')
        for attribute in draw(
            st.lists(st.sampled_from(["x", "y", "a:z", "b:z", "c:w"]), unique=True, max_size=3)
        ):
            parts.append(f'{attribute}="{escape(draw(texts))}"')
        if draw(st.booleans()):
            parts.append(f'xml:lang="{draw(st.sampled_from(["nl", "en"]))}"')
        content = [escape(draw(texts))]
        if depth < 4:
            for _ in range(draw(st.integers(0, 3))):
                kind = draw(st.sampled_from(["element", "element", "comment", "pi"]))
                if kind == "element":
                    content.append(element(depth + 1))
                elif kind == "comment":
                    content.append("<!-- c -->")
                else:
                    content.append("<?pi some data?>")
                content.append(escape(draw(texts)))
        return f"<{' '.join(parts)}>{''.join(content)}</{tag}>"

    wrapper = '<r xmlns:a="urn:a" xmlns:b="urn:b" xmlns:c="urn:c" xmlns="urn:d1">{}</r>'
    return wrapper.format(element(1))


@settings(max_examples=300, deadline=None)
@given(
    document=_xml_documents(),
    prefixes=st.lists(st.sampled_from(["a", "b", "c", "xml"]), unique=True, max_size=3),
)
def test_python_c14n_matches_libxml2(document: str, prefixes: list[str]) -> None:
    """The pure-Python exc-c14n (used for PrefixList '#default') agrees with libxml2."""
    apex = etree.fromstring(document)[0]
    expected = etree.tostring(
        apex,
        method="c14n",
        exclusive=True,
        with_comments=False,
        inclusive_ns_prefixes=prefixes or None,
    )
    assert exc_c14n_python(apex, prefixes) == expected
