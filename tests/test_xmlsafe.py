"""digipoort.xmlsafe: the one hardened XML parser.

Memory is asserted, not time: ``tracemalloc`` for Python allocations and, because libxml2
allocates with plain ``malloc`` (invisible to tracemalloc), the peak RSS of a fresh
subprocess for the entity and element bombs.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from digipoort import xmlsafe
from digipoort.xmlsafe import LIBXML2_MAX_DEPTH, XmlLimits, XmlRejected, parse

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "validators" / "samples"
UBL_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
WELL_FORMED = [
    "cbs-detailhandel.xml",
    "cbs-detailhandel-invalid.xml",
    "digiinkoop-factuur.xml",
    "digiinkoop-factuur-invalid.xml",
    "digiinkoop-order.xml",
    "digiinkoop-order-invalid.xml",
    "omzetbelasting.xml",
]
MIB = 1024 * 1024
CODES = {
    "malformed",
    "dtd_forbidden",
    "too_deep",
    "too_large",
    "too_many_elements",
    "too_many_namespaces",
    "too_many_attributes",
}


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def rejected(data: bytes, limits: XmlLimits = xmlsafe.DEFAULT_LIMITS) -> XmlRejected:
    with pytest.raises(XmlRejected) as info:
        parse(data, limits)
    return info.value


def billion_laughs(levels: int = 9) -> bytes:
    decls = ['<!ENTITY lol0 "lol">']
    decls += [f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, levels + 1)]
    doctype = f"<!DOCTYPE lolz [\n{''.join(decls)}\n]>"
    return f'<?xml version="1.0"?>\n{doctype}\n<lolz>&lol{levels};</lolz>'.encode()


def quadratic_blowup(entity_size: int = 100_000, refs: int = 100_000) -> bytes:
    return (
        b'<?xml version="1.0"?><!DOCTYPE kaboom [<!ENTITY a "'
        + b"a" * entity_size
        + b'">]><kaboom>'
        + b"&a;" * refs
        + b"</kaboom>"
    )


def doctype(tree: etree._ElementTree) -> str:
    return str(cast(Any, tree.docinfo).doctype)


def element_count(tree: etree._ElementTree) -> int:
    return int(cast(float, tree.xpath("count(//*)")))


def line_of(element: object) -> int | None:
    return cast(Any, element).sourceline  # type: ignore[no-any-return]


def peak_python_allocations(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("name", WELL_FORMED)
def test_well_formed_samples_parse(name: str) -> None:
    tree = parse(sample(name))
    assert isinstance(tree, etree._ElementTree)
    assert tree.getroot() is not None
    assert doctype(tree) == ""


def test_tree_keeps_line_numbers_and_namespaces() -> None:
    tree = parse(sample("digiinkoop-factuur.xml"))
    issue_date = tree.find(f".//{{{UBL_CBC}}}IssueDate")
    assert issue_date is not None
    assert line_of(issue_date) == 5
    assert issue_date.text == "2026-11-01"


def test_comments_processing_instructions_and_cdata_are_fine() -> None:
    data = b'<?xml version="1.0"?>\n<!-- c -->\n<?pi x?>\n<r><![CDATA[<not-a-tag/>]]>&amp;&#65;</r>'
    assert parse(data).getroot().text == "<not-a-tag/>&A"


def test_utf16_document_parses() -> None:
    data = '<?xml version="1.0" encoding="UTF-16"?>\n<r>\n  <é>ü</é>\n</r>'.encode("utf-16")
    tree = parse(data)
    assert tree.getroot()[0].text == "ü"
    assert line_of(tree.getroot()[0]) == 3


def test_xinclude_is_not_processed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("XINCLUDE-MARKER-7")
    data = (
        f'<r xmlns:xi="http://www.w3.org/2001/XInclude">'
        f'<xi:include href="{secret.as_uri()}" parse="text"/></r>'
    ).encode()
    tree = parse(data)
    assert b"XINCLUDE-MARKER-7" not in etree.tostring(tree)


def test_str_input_is_a_programming_error() -> None:
    with pytest.raises(TypeError):
        parse("<r/>")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- malformed


def test_malformed_sample_is_refused_with_its_line() -> None:
    exc = rejected(sample("malformed.xml"))
    assert exc.code == "malformed"
    assert exc.line == 4
    assert "mismatch" in exc.message
    assert "line 4" in exc.message
    assert "(line 4)" in str(exc)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"not xml at all",
        b"<r>",
        b"<r></s>",
        b"<r/><r/>",
        b"<r a='1' a='2'/>",
        b"<r>&undefined;</r>",
        b"<r>\x00</r>",
        b"<1r/>",
        b"<r/><!DOCTYPE r>",
        b'<?xml version="1.0" encoding="no-such-encoding"?><r/>',
        b"\xff\xfe\x00",
    ],
)
def test_malformed_documents_are_refused(data: bytes) -> None:
    exc = rejected(data)
    assert exc.code == "malformed"
    assert exc.message
    assert "\n" not in exc.message


def test_line_of_a_late_error() -> None:
    data = b"<r>\n" + b"  <a>1</a>\n" * 40 + b"  <a>2</b>\n</r>"
    exc = rejected(data)
    assert (exc.code, exc.line) == ("malformed", 42)


# --------------------------------------------------------------------------- DTDs


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"<!DOCTYPE r><r/>", 1),
        (b'<?xml version="1.0"?>\n\n<!DOCTYPE r PUBLIC "-//X//Y//EN" "r.dtd">\n<r/>', 3),
        (b"<!-- a comment\n-->\n<!DOCTYPE r [\n<!ELEMENT r EMPTY>\n]>\n<r/>", 3),
        (b"<?xml version='1.0'?><!DOCTYPE r [<!ATTLIST r a CDATA 'x'>]><r/>", 1),
        ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE r>\n<r/>'.encode("utf-16"), 2),
        ('<?xml version="1.0" encoding="UTF-16"?>\n<!DOCTYPE r>\n<r/>'.encode("utf-16-be"), 2),
        # UTF-7 hides the "<!DOCTYPE" bytes from any byte scan; libxml2 still sees it.
        (b'<?xml version="1.0" encoding="UTF-7"?>\n+ADw-!DOCTYPE r+AD4-<r/>', None),
    ],
)
def test_any_doctype_is_refused(data: bytes, line: int | None) -> None:
    exc = rejected(data)
    assert exc.code == "dtd_forbidden"
    assert exc.line == line


def test_billion_laughs_sample_is_refused_with_flat_memory() -> None:
    data = sample("billion-laughs.xml")
    outcome: list[XmlRejected] = []

    def attempt() -> None:
        try:
            parse(data)
        except XmlRejected as exc:
            outcome.append(exc)

    peak = peak_python_allocations(attempt)
    assert [e.code for e in outcome] == ["dtd_forbidden"]
    assert outcome[0].line == 2
    assert peak < 1 * MIB


def test_quadratic_blowup_is_refused_with_flat_memory() -> None:
    data = quadratic_blowup()  # 10 MB document that would expand to 10 GB
    outcome: list[XmlRejected] = []

    def attempt() -> None:
        try:
            parse(data)
        except XmlRejected as exc:
            outcome.append(exc)

    peak = peak_python_allocations(attempt)
    assert [e.code for e in outcome] == ["dtd_forbidden"]
    assert peak < 1 * MIB


def test_bombs_do_not_grow_the_process(tmp_path: Path) -> None:
    """Peak RSS of a fresh interpreter: libxml2's own allocations count here."""
    script = textwrap.dedent(
        """
        import gc, json, resource, sys
        from digipoort import xmlsafe
        from tests.test_xmlsafe import billion_laughs, quadratic_blowup

        bombs = {
            "billion_laughs": billion_laughs(9),
            "billion_laughs_utf16": billion_laughs(9).decode().encode("utf-16"),
            "parameter_laughs": (
                b'<!DOCTYPE r [<!ENTITY % a0 "xxxxxxxxxx">'
                + b"".join(
                    b'<!ENTITY %% a%d "%s">' % (i, b"%%a%d;" % (i - 1) * 10) for i in range(1, 9)
                )
                + b"%a8;]><r/>"
            ),
            "quadratic": quadratic_blowup(),
            "flat_elements": b"<r>" + b"<a/>" * 2_000_000 + b"</r>",
        }
        limits = {"flat_elements": xmlsafe.XmlLimits(max_elements=10_000)}
        gc.collect()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        codes = {}
        for name, data in bombs.items():
            try:
                xmlsafe.parse(data, limits.get(name, xmlsafe.DEFAULT_LIMITS))
                codes[name] = "parsed"
            except xmlsafe.XmlRejected as exc:
                codes[name] = exc.code
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"codes": codes, "grew_kib": after - before}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert report["codes"] == {
        "billion_laughs": "dtd_forbidden",
        "billion_laughs_utf16": "dtd_forbidden",
        "parameter_laughs": "dtd_forbidden",
        "quadratic": "dtd_forbidden",
        "flat_elements": "too_many_elements",
    }
    assert report["grew_kib"] < 16 * 1024, report


# --------------------------------------------------------------------------- XXE


def xxe_documents(secret: Path) -> dict[str, bytes]:
    uri = secret.as_uri()
    dtd = secret.with_suffix(".dtd")
    dtd.write_text(f'<!ENTITY leak SYSTEM "{uri}">')
    return {
        "general_entity": f'<!DOCTYPE r [<!ENTITY x SYSTEM "{uri}">]><r>&x;</r>'.encode(),
        "plain_path": f'<!DOCTYPE r [<!ENTITY x SYSTEM "{secret}">]><r>&x;</r>'.encode(),
        "in_attribute": f'<!DOCTYPE r [<!ENTITY x SYSTEM "{uri}">]><r a="&x;"/>'.encode(),
        "parameter_entity": (
            f'<!DOCTYPE r [<!ENTITY % p SYSTEM "{dtd.as_uri()}"> %p;]><r>&leak;</r>'
        ).encode(),
        "external_dtd": f'<!DOCTYPE r SYSTEM "{dtd.as_uri()}"><r>&leak;</r>'.encode(),
        "network": b'<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>',
        "utf16": f'<!DOCTYPE r [<!ENTITY x SYSTEM "{uri}">]><r>&x;</r>'.encode("utf-16"),
    }


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text("XXE-SECRET-MARKER-4711\n")
    return path


def test_xxe_sample_is_refused() -> None:
    exc = rejected(sample("xxe.xml"))
    assert (exc.code, exc.line) == ("dtd_forbidden", 2)
    assert "root:" not in str(exc)


def test_xxe_never_reads_the_file(secret: Path) -> None:
    for name, data in xxe_documents(secret).items():
        exc = rejected(data)
        assert exc.code == "dtd_forbidden", name
        for text in (str(exc), repr(exc), exc.message, repr(exc.args), repr(pickle.dumps(exc))):
            assert "XXE-SECRET-MARKER" not in text, name


def test_second_line_of_defence_never_expands_or_fetches(secret: Path) -> None:
    """Even without the DOCTYPE probe, the tree parser's options keep entities unexpanded
    and unfetched (and libxml2 refuses amplification on its own)."""
    documents = {
        **xxe_documents(secret),
        "billion_laughs": billion_laughs(9),
        "quadratic": quadratic_blowup(10_000, 10_000),
    }
    for name, data in documents.items():
        try:
            root = etree.fromstring(data, xmlsafe._hardened_parser())
        except etree.XMLSyntaxError as exc:
            assert "XXE-SECRET-MARKER" not in str(exc), name
            continue
        out = etree.tostring(root)
        assert b"XXE-SECRET-MARKER" not in out, name
        assert len(out) < 100_000, name


# --------------------------------------------------------------------------- limits


def test_size_limit() -> None:
    data = b"<r>" + b"x" * 93 + b"</r>"
    assert len(data) == 100
    assert parse(data, XmlLimits(max_bytes=100)).getroot().tag == "r"
    exc = rejected(data, XmlLimits(max_bytes=99))
    assert exc.code == "too_large"
    assert "100" in exc.message and "99" in exc.message


def test_oversized_input_is_refused_before_parsing() -> None:
    data = b"\x00garbage" * 1000  # not XML at all: the size check comes first
    assert rejected(data, XmlLimits(max_bytes=10)).code == "too_large"


def nested(depth: int, *, newline: bool = True) -> bytes:
    sep = b"\n" if newline else b""
    return (b"<a>" + sep) * depth + b"</a>" * depth


def test_libxml2_depth_is_the_default_limit() -> None:
    parse(nested(LIBXML2_MAX_DEPTH))
    exc = rejected(nested(LIBXML2_MAX_DEPTH + 1))
    assert exc.code == "too_deep"
    assert exc.line == LIBXML2_MAX_DEPTH + 1


def test_configured_depth_limit() -> None:
    limits = XmlLimits(max_depth=10)
    parse(nested(10), limits)
    exc = rejected(nested(11), limits)
    assert (exc.code, exc.line) == ("too_deep", 11)
    assert "10" in exc.message


def test_depth_bomb_is_refused_with_flat_memory() -> None:
    data = nested(1_000_000, newline=False)  # 7 MB of <a>
    outcome: list[XmlRejected] = []

    def attempt() -> None:
        try:
            parse(data)
        except XmlRejected as exc:
            outcome.append(exc)

    peak = peak_python_allocations(attempt)
    assert [e.code for e in outcome] == ["too_deep"]
    assert peak < 1 * MIB


def flat(count: int) -> bytes:
    return b"<r>\n" + b"<a/>\n" * (count - 1) + b"</r>"


@pytest.mark.parametrize("max_elements", [1, 10, 1000])
def test_element_limit_is_exact(max_elements: int) -> None:
    limits = XmlLimits(max_elements=max_elements)
    tree = parse(flat(max_elements), limits)
    assert element_count(tree) == max_elements
    exc = rejected(flat(max_elements + 1), limits)
    assert exc.code == "too_many_elements"
    assert exc.line == max_elements + 1


def test_element_bomb_stops_early() -> None:
    data = b"<r>" + b"<a/>" * 2_000_000 + b"</r>"  # 8 MB, 2 million elements
    outcome: list[XmlRejected] = []

    def attempt() -> None:
        try:
            parse(data, XmlLimits(max_elements=1000))
        except XmlRejected as exc:
            outcome.append(exc)

    peak = peak_python_allocations(attempt)
    assert [e.code for e in outcome] == ["too_many_elements"]
    assert peak < 2 * MIB


def test_element_count_is_checked_even_when_lt_is_not_a_byte() -> None:
    """In UTF-7 ``<`` can be ``+ADw-``: the byte count says 1, the exact check says 11."""
    body = "<r>" + "<a/>" * 10 + "</r>"
    data = b'<?xml version="1.0" encoding="UTF-7"?>\n' + body.replace("<", "+ADw-").encode()
    assert data.count(b"<") == 1
    assert len(parse(data).getroot()) == 10
    assert rejected(data, XmlLimits(max_elements=5)).code == "too_many_elements"


def test_libxml2_text_limit_is_too_large() -> None:
    exc = rejected(b"<r>" + b"x" * 10_000_001 + b"</r>")
    assert exc.code == "too_large"
    assert exc.line == 1


@pytest.mark.parametrize("field", ["max_bytes", "max_depth", "max_elements"])
@pytest.mark.parametrize("value", [0, -1, True, 1.5])
def test_limits_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        XmlLimits(**{field: value})  # type: ignore[arg-type]


def test_rejection_is_a_plain_exception() -> None:
    exc = XmlRejected("malformed", "boom", 3)
    assert (exc.code, exc.message, exc.line) == ("malformed", "boom", 3)
    assert str(exc) == "malformed: boom (line 3)"
    assert str(XmlRejected("too_large", "big")) == "too_large: big"
    copy = pickle.loads(pickle.dumps(exc))  # noqa: S301 (our own bytes)
    assert (copy.code, copy.message, copy.line) == ("malformed", "boom", 3)


# --------------------------------------------------------------------------- fuzzing

INTERESTING = [
    b"<",
    b">",
    b"&",
    b"&amp;",
    b"&#0;",
    b"&#x10FFFF;",
    b"]]>",
    b"<!DOCTYPE r>",
    b'<!ENTITY x "y">',
    b"<!--",
    b"-->",
    b"<?",
    b"?>",
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xc3",
    b'"',
    b"xmlns:a='urn:x'",
    b"<a>" * 300,
    b"</a>",
    b'encoding="UTF-16"',
]


@st.composite
def mutated_samples(draw: st.DrawFn) -> bytes:
    data = bytearray(sample(draw(st.sampled_from([*WELL_FORMED, "malformed.xml"]))))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(INTERESTING) | st.binary(max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


limits_strategy = st.builds(
    XmlLimits,
    max_bytes=st.integers(1, 4096),
    max_depth=st.integers(1, 300),
    max_elements=st.integers(1, 100),
)


def check_outcome(data: bytes, limits: XmlLimits) -> None:
    try:
        tree = parse(data, limits)
    except XmlRejected as exc:
        assert exc.code in CODES
        assert isinstance(exc.message, str) and exc.message
        assert exc.line is None or exc.line >= 1
        return
    assert isinstance(tree, etree._ElementTree)
    assert len(data) <= limits.max_bytes
    assert not doctype(tree) and tree.docinfo.internalDTD is None
    assert element_count(tree) <= limits.max_elements
    assert not any(isinstance(n, etree._Entity) for n in tree.iter())


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    check_outcome(data, xmlsafe.DEFAULT_LIMITS)


@FUZZ
@given(mutated_samples())
def test_fuzz_mutated_samples(data: bytes) -> None:
    check_outcome(data, xmlsafe.DEFAULT_LIMITS)


@FUZZ
@given(mutated_samples(), limits_strategy)
def test_fuzz_mutated_samples_with_tight_limits(data: bytes, limits: XmlLimits) -> None:
    check_outcome(data, limits)


# --------------------------------------------------------------------------- bounds before c14n


def _namespaced(n: int, *, spread: bool = False, encoding: str = "utf-8") -> bytes:
    decls = [f'xmlns:p{i}="urn:x:{i}"' for i in range(n)]
    if spread:  # one declaration per element
        inner = "".join(f"<e {d}/>" for d in decls)
        text = f"<r>{inner}</r>"
    else:
        text = f"<r {' '.join(decls)}/>"
    return text.encode(encoding)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (_namespaced(1025), "too_many_namespaces"),
        (_namespaced(1025, spread=True), "too_many_namespaces"),
        (_namespaced(1025, encoding="utf-16"), "too_many_namespaces"),
        (b"<r " + b" ".join(b'a%d="1"' % i for i in range(1025)) + b"/>", "too_many_attributes"),
    ],
    ids=["on_root", "one_per_element", "utf16", "attributes"],
)
def test_namespace_declarations_and_attributes_are_bounded(data: bytes, code: str) -> None:
    assert rejected(data).code == code


def test_documents_within_the_bounds_parse() -> None:
    assert parse(_namespaced(1024)).getroot().tag == "r"
    assert parse(b"<r " + b" ".join(b'a%d="1"' % i for i in range(1024)) + b"/>") is not None
    # "xmlns" in text only makes the cheap pre-count look closer; still parsed
    assert parse(b"<r>" + b"xmlns " * 2000 + b"</r>").getroot().tag == "r"
    with pytest.raises(ValueError):
        XmlLimits(max_namespace_declarations=0)
