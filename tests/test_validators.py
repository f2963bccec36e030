"""validators.content and validators.schemas: limits, MIME types, the schema registry and
document validation (with line numbers, capped, linear in the document)."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from digipoort.xmlsafe import XmlLimits
from tests.test_xmlsafe import mutated_samples
from validators.content import Violation, check_mime, check_size, looks_like_xml, normalise_mime
from validators.schemas import (
    MAX_VIOLATIONS,
    PACKAGED,
    SchemaError,
    SchemaNotFound,
    SchemaRegistry,
    strip_inert_doctype,
    validate_document,
)

SAMPLES = Path(__file__).resolve().parent.parent / "validators" / "samples"
# The home-made DigiInkoop schemas and their documents stay as fixtures for the XSD
# machinery (streaming, line numbers); the berichtsoorten use the official UBL 2.1 now.
HOMEMADE = SAMPLES / "homemade"
FLOWS = ["cbs-detailhandel", "digiinkoop-factuur", "digiinkoop-order"]
XS = 'xmlns:xs="http://www.w3.org/2001/XMLSchema"'

# The lines the invalid samples' errors are on (see the files).
INVALID_LINES = {
    "cbs-detailhandel": [5, 8, 14, 15, 18],
    "digiinkoop-factuur": [4, 6, 9, 18],
    "digiinkoop-order": [4, 8, 14],
}


def errors_of(schema: etree.XMLSchema) -> list[Any]:
    return list(cast(Any, schema.error_log))


def sample(name: str) -> bytes:
    if name.startswith("digiinkoop-"):
        return (HOMEMADE / name).read_bytes()
    return (SAMPLES / name).read_bytes()


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry()


# --------------------------------------------------------------------------- content


def test_check_size() -> None:
    assert check_size(0, 10) is None
    assert check_size(10, 10) is None
    violation = check_size(11, 10)
    assert violation is not None
    assert violation.code == "too_large"
    assert "11" in violation.message and "10" in violation.message
    assert violation.line is None


@pytest.mark.parametrize(
    ("given", "allowed"),
    [
        ("text/xml", ["text/xml"]),
        ("text/xml; charset=utf-8", ["text/xml"]),
        ("Text/XML ; Charset=UTF-8", ["application/xml", "text/xml"]),
        ("text/xml", ["TEXT/XML; charset=iso-8859-1"]),
        ("application/pdf", ["application/*"]),
        ("image/png", ["*/*"]),
        ("application/vnd.etsi.asic-e+zip", ["application/vnd.etsi.asic-e+zip"]),
    ],
)
def test_check_mime_allows(given: str, allowed: list[str]) -> None:
    assert check_mime(given, allowed) is None


@pytest.mark.parametrize(
    ("given", "allowed"),
    [
        ("application/json", ["text/xml", "application/xml"]),
        ("text/xml", []),
        ("text/xmlx", ["text/xml"]),
        ("text/plain", ["application/*"]),
        ("", ["text/xml"]),
        ("xml", ["text/xml"]),
        ("text/xml/extra", ["text/xml"]),
        ("*/*", ["*/*"]),
        ("text/x ml", ["text/x ml"]),
    ],
)
def test_check_mime_refuses(given: str, allowed: list[str]) -> None:
    violation = check_mime(given, allowed)
    assert violation is not None
    assert violation.code == "mime"
    assert violation.message


def test_normalise_mime() -> None:
    assert normalise_mime(" Application/XML ; charset=UTF-8") == "application/xml"


@pytest.mark.parametrize(
    ("mime", "xml"),
    [
        ("application/xml", True),
        ("text/xml", True),
        ("TEXT/XML; charset=utf-8", True),
        ("application/soap+xml", True),
        ("application/xbrl-instance+xml", True),
        ("image/svg+xml; charset=utf-8", True),
        ("application/json", False),
        ("application/pdf", False),
        ("text/plain", False),
        ("application/xml-dtd", False),
        ("+xml", False),
        ("", False),
    ],
)
def test_looks_like_xml(mime: str, xml: bool) -> None:
    assert looks_like_xml(mime) is xml


def test_violation_is_a_value() -> None:
    a = Violation("schema", "bad", 3)
    assert a == Violation("schema", "bad", 3)
    assert len({a, Violation("schema", "bad", 3)}) == 1
    with pytest.raises(AttributeError):
        a.line = 4  # type: ignore[misc]


# --------------------------------------------------------------------------- registry


def test_packaged_schemas_are_available(registry: SchemaRegistry) -> None:
    assert {f"{flow}.xsd" for flow in FLOWS} <= set(registry.available())
    assert registry.search_dirs[-1] == PACKAGED


@pytest.mark.parametrize("flow", FLOWS)
def test_packaged_schema_compiles_once(registry: SchemaRegistry, flow: str) -> None:
    schema = registry.get(f"{flow}.xsd")
    assert isinstance(schema, etree.XMLSchema)
    assert registry.get(f"{flow}.xsd") is schema


@pytest.mark.parametrize("flow", FLOWS)
def test_packaged_schemas_have_their_own_qualified_namespace(flow: str) -> None:
    root = etree.parse(str(PACKAGED / f"{flow}.xsd")).getroot()
    assert root.get("targetNamespace", "").startswith("urn:digipoort:test:")
    assert root.get("elementFormDefault") == "qualified"


@pytest.mark.parametrize(
    "name", ["nope.xsd", "../xsd/cbs-detailhandel.xsd", "/etc/passwd", "a/b.xsd", "", "..", "x\\y"]
)
def test_unknown_or_path_like_names_are_not_found(registry: SchemaRegistry, name: str) -> None:
    with pytest.raises(SchemaNotFound):
        registry.get(name)


def test_missing_config_dir_is_fine(tmp_path: Path) -> None:
    registry = SchemaRegistry([tmp_path / "does-not-exist"])
    assert registry.get("cbs-detailhandel.xsd") is not None


def test_config_dir_comes_before_the_packaged_schemas(tmp_path: Path) -> None:
    (tmp_path / "cbs-detailhandel.xsd").write_text(
        f'<xs:schema {XS}><xs:element name="override"/></xs:schema>'
    )
    schema = SchemaRegistry([tmp_path]).get("cbs-detailhandel.xsd")
    assert validate_document(b"<override/>", schema) == []


def test_a_broken_schema_is_a_schema_error_and_is_not_cached(tmp_path: Path) -> None:
    path = tmp_path / "flow.xsd"
    path.write_text(f"<xs:schema {XS}><xs:element name='a' type='xs:nope'/></xs:schema>")
    registry = SchemaRegistry([tmp_path])
    with pytest.raises(SchemaError, match=r"flow\.xsd"):
        registry.get("flow.xsd")
    path.write_text(f"<xs:schema {XS}><xs:element name='a' type='xs:string'/></xs:schema>")
    assert validate_document(b"<a>x</a>", registry.get("flow.xsd")) == []


@pytest.mark.parametrize(
    "text",
    [
        "<xs:schema",  # not well-formed
        # a DTD whose entity is used, or with an external identifier
        f'<!DOCTYPE xs:schema [<!ENTITY e "x">]><xs:schema {XS} id="&e;"/>',
        f'<!DOCTYPE xs:schema SYSTEM "http://127.0.0.1:1/x.dtd"><xs:schema {XS}/>',
        f'<!DOCTYPE xs:schema [<!ENTITY e "x">]><!DOCTYPE a []><xs:schema {XS}/>',
        "<notaschema/>",
    ],
)
def test_bad_schema_files_are_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / "flow.xsd").write_text(text)
    with pytest.raises(SchemaError):
        SchemaRegistry([tmp_path]).get("flow.xsd")


def test_an_inert_dtd_in_a_schema_file_is_blanked(tmp_path: Path) -> None:
    """OASIS UBL 2.1 ships the W3C xmldsig schema with an unused internal DTD subset."""
    text = (
        f'<!DOCTYPE xs:schema\n [\n <!ENTITY dsig "urn:x">\n ]>\n<xs:schema {XS}>'
        "<xs:element name='a' type='xs:string'/></xs:schema>"
    )
    (tmp_path / "flow.xsd").write_text(text)
    assert validate_document(b"<a>x</a>", SchemaRegistry([tmp_path]).get("flow.xsd")) == []
    assert strip_inert_doctype(text.encode()).count(b"\n") == text.count("\n")
    assert strip_inert_doctype(b"<a>&amp;</a>") == b"<a>&amp;</a>"


def schema_importing(location: str, *, kind: str = "import") -> str:
    namespace = 'namespace="urn:common"' if kind == "import" else ""
    type_ref = "c:Code" if kind == "import" else "Code"
    return (
        f'<xs:schema {XS} xmlns:c="urn:common" xmlns="urn:main" targetNamespace="urn:main"'
        f' elementFormDefault="qualified">'
        f'<xs:{kind} {namespace} schemaLocation="{location}"/>'
        f'<xs:element name="e" type="{type_ref}"/></xs:schema>'
    )


COMMON = (
    f'<xs:schema {XS} targetNamespace="urn:common"><xs:simpleType name="Code">'
    '<xs:restriction base="xs:string"><xs:pattern value="[A-Z]{3}"/></xs:restriction>'
    "</xs:simpleType></xs:schema>"
)
CHAMELEON = (
    f'<xs:schema {XS}><xs:simpleType name="Code">'
    '<xs:restriction base="xs:string"><xs:pattern value="[A-Z]{3}"/></xs:restriction>'
    "</xs:simpleType></xs:schema>"
)


def check_code_schema(schema: etree.XMLSchema) -> None:
    assert validate_document(b'<e xmlns="urn:main">EUR</e>', schema) == []
    (violation,) = validate_document(b'<e xmlns="urn:main">euro</e>', schema)
    assert violation.code == "schema"
    assert "pattern" in violation.message


@pytest.mark.parametrize(
    "location",
    ["common.xsd", "./sub/../common.xsd", "sub/nested.xsd", "common%2Exsd", "FILE_URI"],
)
def test_imports_from_the_search_dirs_are_served(tmp_path: Path, location: str) -> None:
    (tmp_path / "common.xsd").write_text(COMMON)
    (tmp_path / "sub").mkdir()
    # a nested schema importing relative to its own location
    (tmp_path / "sub" / "nested.xsd").write_text(
        f'<xs:schema {XS} targetNamespace="urn:common">'
        '<xs:include schemaLocation="../common.xsd"/></xs:schema>'
    )
    location = (tmp_path / "common.xsd").as_uri() if location == "FILE_URI" else location
    (tmp_path / "main.xsd").write_text(schema_importing(location))
    check_code_schema(SchemaRegistry([tmp_path]).get("main.xsd"))


def test_chameleon_include(tmp_path: Path) -> None:
    (tmp_path / "types.xsd").write_text(CHAMELEON)
    (tmp_path / "main.xsd").write_text(schema_importing("types.xsd", kind="include"))
    check_code_schema(SchemaRegistry([tmp_path]).get("main.xsd"))


def test_import_found_in_another_search_dir(tmp_path: Path) -> None:
    config, shared = tmp_path / "config", tmp_path / "shared"
    config.mkdir()
    shared.mkdir()
    (shared / "common.xsd").write_text(COMMON)
    (config / "main.xsd").write_text(schema_importing("common.xsd"))
    check_code_schema(SchemaRegistry([config, shared]).get("main.xsd"))


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the search dir, holding a schema with a secret marker."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret.xsd").write_text(COMMON.replace("Code", "SECRETMARKER4711"))
    return d


@pytest.mark.parametrize(
    "location",
    [
        "../outside/secret.xsd",
        "OUTSIDE_ABSOLUTE",
        "OUTSIDE_URI",
        "http://127.0.0.1:9/common.xsd",
        "https://example.invalid/common.xsd",
        "ftp://example.invalid/common.xsd",
        "file://otherhost/common.xsd",
        "data:text/plain,x",
        "missing.xsd",
        "symlink.xsd",
        "with-dtd.xsd",
    ],
)
def test_other_imports_are_refused(tmp_path: Path, outside: Path, location: str) -> None:
    search = tmp_path / "xsd"
    search.mkdir()
    (search / "symlink.xsd").symlink_to(outside / "secret.xsd")
    (search / "with-dtd.xsd").write_text(f'<!DOCTYPE x SYSTEM "x.dtd">{COMMON}')
    location = {
        "OUTSIDE_ABSOLUTE": str(outside / "secret.xsd"),
        "OUTSIDE_URI": (outside / "secret.xsd").as_uri(),
    }.get(location, location)
    (search / "main.xsd").write_text(schema_importing(location))
    with pytest.raises(SchemaError) as info:
        SchemaRegistry([search]).get("main.xsd")
    assert "refused" in str(info.value)
    assert "SECRETMARKER" not in str(info.value)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("flow", FLOWS)
def test_valid_samples_pass(registry: SchemaRegistry, flow: str) -> None:
    assert validate_document(sample(f"{flow}.xml"), registry.get(f"{flow}.xsd")) == []


@pytest.mark.parametrize("flow", FLOWS)
def test_invalid_samples_give_each_error_with_its_line(registry: SchemaRegistry, flow: str) -> None:
    violations = validate_document(sample(f"{flow}-invalid.xml"), registry.get(f"{flow}.xsd"))
    assert len({v.message for v in violations}) >= 2
    assert all(v.code == "schema" for v in violations)
    assert all(v.message.startswith("Element '") for v in violations)
    assert [v.line for v in violations] == INVALID_LINES[flow]


@pytest.mark.parametrize("flow", FLOWS)
def test_stream_validation_agrees_with_tree_validation(registry: SchemaRegistry, flow: str) -> None:
    schema = registry.get(f"{flow}.xsd")
    for name in (f"{flow}.xml", f"{flow}-invalid.xml"):
        tree = etree.fromstring(sample(name)).getroottree()
        assert schema.validate(tree) == (validate_document(sample(name), schema) == [])
        tree_lines = [e.line for e in errors_of(schema)]
        assert tree_lines == [v.line for v in validate_document(sample(name), schema)]


def test_samples_are_valid_for_their_own_schema_only(registry: SchemaRegistry) -> None:
    for flow in FLOWS:
        for other in FLOWS:
            violations = validate_document(sample(f"{flow}.xml"), registry.get(f"{other}.xsd"))
            assert (violations == []) == (flow == other)


def test_without_schema_only_well_formedness_counts() -> None:
    assert validate_document(sample("omzetbelasting.xml"), None) == []
    assert validate_document(sample("cbs-detailhandel-invalid.xml"), None) == []


def test_malformed_gives_one_violation_with_its_line(registry: SchemaRegistry) -> None:
    for schema in (None, registry.get("cbs-detailhandel.xsd")):
        (violation,) = validate_document(sample("malformed.xml"), schema)
        assert violation.code == "malformed"
        assert violation.line == 4
        assert violation.message


@pytest.mark.parametrize("name", ["billion-laughs.xml", "xxe.xml"])
def test_dtds_are_refused(registry: SchemaRegistry, name: str) -> None:
    (violation,) = validate_document(sample(name), registry.get("cbs-detailhandel.xsd"))
    assert (violation.code, violation.line) == ("dtd_forbidden", 2)
    assert "root:" not in violation.message


def test_limits_are_applied(registry: SchemaRegistry) -> None:
    data = sample("digiinkoop-factuur.xml")
    schema = registry.get("digiinkoop-factuur.xsd")
    assert [v.code for v in validate_document(data, schema, XmlLimits(max_bytes=100))] == [
        "too_large"
    ]
    assert [v.code for v in validate_document(data, schema, XmlLimits(max_depth=2))] == ["too_deep"]
    assert [v.code for v in validate_document(data, schema, XmlLimits(max_elements=10))] == [
        "too_many_elements"
    ]


def test_wrong_root_and_wrong_namespace(registry: SchemaRegistry) -> None:
    schema = registry.get("digiinkoop-order.xsd")
    for data in (b"<Order/>", b'<Invoice xmlns="urn:digipoort:test:digiinkoop:order:1"/>'):
        (violation,) = validate_document(data, schema)
        assert violation.code == "schema"
        assert violation.line == 1
        assert "No matching global declaration" in violation.message


def test_duplicate_keys_are_reported(registry: SchemaRegistry) -> None:
    data = sample("cbs-detailhandel.xml").replace(b"NF02", b"LV01")
    (violation,) = validate_document(data, registry.get("cbs-detailhandel.xsd"))
    assert "Duplicate" in violation.message
    assert violation.line is not None


def test_xsi_schema_location_is_ignored(registry: SchemaRegistry, tmp_path: Path) -> None:
    (tmp_path / "evil.xsd").write_text("MARKER-NOT-XML-8812")
    data = sample("digiinkoop-order.xml").replace(
        b'<Order xmlns="urn:digipoort:test:digiinkoop:order:1">',
        b'<Order xmlns="urn:digipoort:test:digiinkoop:order:1"'
        b' xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
        b' xsi:schemaLocation="urn:digipoort:test:digiinkoop:order:1 '
        + (tmp_path / "evil.xsd").as_uri().encode()
        + b'">',
    )
    assert validate_document(data, registry.get("digiinkoop-order.xsd")) == []


def test_multiline_value_is_reported_on_its_end_tag_line(registry: SchemaRegistry) -> None:
    data = sample("digiinkoop-order.xml").replace(
        b"<IssueDate>2026-10-20</IssueDate>", b"<IssueDate>\n2026-13-45\n</IssueDate>"
    )
    (violation,) = validate_document(data, registry.get("digiinkoop-order.xsd"))
    assert violation.line == 6


# --- the cap, and linear cost whatever the document holds

SIBLINGS = (
    f'<xs:schema {XS}><xs:element name="r"><xs:complexType><xs:sequence>'
    '<xs:element name="a" maxOccurs="unbounded" type="xs:nonNegativeInteger"/>'
    "</xs:sequence></xs:complexType></xs:element></xs:schema>"
)


@pytest.fixture(scope="module")
def siblings() -> etree.XMLSchema:
    return etree.XMLSchema(etree.fromstring(SIBLINGS.encode()))


def test_violations_are_capped_with_lines(siblings: etree.XMLSchema) -> None:
    data = b"<r>\n" + b"<a>-1</a>\n" * 1000 + b"</r>"
    violations = validate_document(data, siblings)
    assert len(violations) == MAX_VIOLATIONS
    assert [v.line for v in violations] == list(range(2, 2 + MAX_VIOLATIONS))
    assert len(validate_document(data, siblings, max_violations=7)) == 7


def test_errors_on_one_long_line_all_get_line_1(siblings: etree.XMLSchema) -> None:
    violations = validate_document(b"<r>" + b"<a>x</a>" * 300 + b"</r>", siblings)
    assert len(violations) == MAX_VIOLATIONS
    assert {v.line for v in violations} == {1}


def test_errors_late_in_a_long_document(siblings: etree.XMLSchema) -> None:
    data = b"<r>\n" + b"<a>1</a>\n" * 50_000 + b"<a>-1</a>\n<a>2</a>\n<a>x</a>\n</r>"
    violations = validate_document(data, siblings)
    assert [v.line for v in violations] == [50_002, 50_004]


@pytest.mark.timeout(60)
def test_half_a_million_invalid_siblings_cost_linear_time(siblings: etree.XMLSchema) -> None:
    """Tree validation would take a quarter of an hour here (lxml walks all preceding
    siblings for every error); the streaming validation stops at the cap."""
    data = b"<r>\n" + b"<a>-1</a>\n" * 500_000 + b"</r>"
    tracemalloc.start()
    try:
        violations = validate_document(data, siblings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(violations) == MAX_VIOLATIONS
    assert violations[-1].line == MAX_VIOLATIONS + 1
    assert peak < 4 * 1024 * 1024


# --- property: streaming validation agrees with libxml2's tree validation


@st.composite
def edited_invoices(draw: st.DrawFn) -> bytes:
    data = sample("digiinkoop-factuur.xml")
    edits = [
        (b"2026-11-01", [b"2026-02-30", b"01-11-2026", b"", b"2026-11-01Z"]),
        (b"EUR</Doc", [b"eur</Doc", b"EURO</Doc", b"E1R</Doc"]),
        (b'unitCode="C62"', [b'unitCode="c62"', b"", b'unitCode="C62" x="1"']),
        (b"249.00", [b"249.001", b"-249.00", b"abc", b"1e3"]),
        (b"<ID>2</ID>", [b"<ID>1</ID>", b"<ID></ID>", b""]),
        (b"00000099200000040000", [b"0000009920000004000", b"KVK"]),
        (b"  <TaxTotal>", [b"  <Extra/>\n  <TaxTotal>", b"  <TaxTotal>"]),
    ]
    for old, replacements in edits:
        if draw(st.booleans()):
            data = data.replace(old, draw(st.sampled_from(replacements)), 1)
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=edited_invoices())
def test_fuzz_streaming_agrees_with_tree_validation(registry: SchemaRegistry, data: bytes) -> None:
    schema = registry.get("digiinkoop-factuur.xsd")
    violations = validate_document(data, schema)
    tree_valid = schema.validate(etree.fromstring(data).getroottree())
    assert tree_valid == (violations == [])
    if not tree_valid:
        assert [e.message for e in errors_of(schema)] == [v.message for v in violations]
        assert all(v.line is not None and v.line >= 1 for v in violations)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=1024) | mutated_samples())
def test_fuzz_validate_document_only_returns_violations(
    registry: SchemaRegistry, data: bytes
) -> None:
    schema = registry.get("digiinkoop-factuur.xsd")
    for violation in validate_document(data, schema):
        assert isinstance(violation, Violation)
        assert violation.code in {
            "malformed",
            "dtd_forbidden",
            "too_deep",
            "too_large",
            "too_many_elements",
            "schema",
        }


def test_samples_directory_lists_what_the_tests_use() -> None:
    names = set(os.listdir(SAMPLES)) | set(os.listdir(HOMEMADE))
    expected = {f"{f}.xml" for f in FLOWS} | {f"{f}-invalid.xml" for f in FLOWS}
    expected |= {"omzetbelasting.xml", "malformed.xml", "billion-laughs.xml", "xxe.xml"}
    assert expected <= names
