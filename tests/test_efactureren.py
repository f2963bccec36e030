"""E-factureren on the official standards: UBL 2.1 XSD, EN 16931 and SI-UBL 2.0 Schematron
(saxonche), SVRL findings, CEN's examples and conformance tests, and no external access.

The stylesheets are compiled once per test session (``profiles`` fixture, ~3 s each). The
full CEN conformance sweep (1131 tests, 1133 asserts) takes about 20 s here, so it is part
of the default suite.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from lxml import etree

from digipoort.cli import main
from digipoort.config import Settings, load_settings
from digipoort.devenv import find_standards, link_sample_artefacts, render_config
from digipoort.xmlsafe import XmlLimits
from tests.support import SAMPLES
from validators.findings import MAX_TEXT, Finding, format_findings, verdict
from validators.profiles import Checker, ProfileSpec, check_document, resolve
from validators.schematron import SchematronEngine, SchematronError, parse_svrl

STANDARDS = find_standards()
pytestmark = pytest.mark.skipif(STANDARDS is None, reason="no ../shared/standards")
LIMITS = XmlLimits(max_bytes=20 * 1024 * 1024, max_depth=256)
VEFA = "{http://difi.no/xsd/vefa/validator/1.0}"


@dataclass
class Profiles:
    settings: Settings
    checker: Checker
    si_ubl: ProfileSpec
    en16931: ProfileSpec
    order: ProfileSpec

    @property
    def en16931_xslt(self) -> Path:
        return self.en16931.schematron[0].paths[0]


@pytest.fixture(scope="session")
def profiles(tmp_path_factory: pytest.TempPathFactory) -> Profiles:
    assert STANDARDS is not None
    d = tmp_path_factory.mktemp("efact")
    link_sample_artefacts(d / "standards", STANDARDS)
    (d / "digipoort.toml").write_text(render_config())
    settings = load_settings(d / "digipoort.toml")
    soorten = {b.name: b for b in settings.registry.berichtsoorten}
    art = settings.resolve(settings.validation.artefacts_dir)

    def spec(name: str) -> ProfileSpec:
        profile = soorten[name].validation
        assert profile is not None
        return resolve(profile, art)

    checker = Checker()
    result = Profiles(
        settings,
        checker,
        spec("DigiInkoop-Factuur"),
        spec("e-Factuur-EN16931"),
        spec("DigiInkoop-Order"),
    )
    for s in (result.si_ubl, result.en16931, result.order):
        checker.prepare(s)
    return result


def rules(findings: list[Finding], *severities: str) -> set[str]:
    return {f.rule for f in findings if not severities or f.severity in severities}


# --------------------------------------------------------------------------- samples


def test_the_sample_invoice_passes_si_ubl_and_en16931(profiles: Profiles) -> None:
    data = (SAMPLES / "digiinkoop-factuur.xml").read_bytes()
    assert profiles.checker.check(profiles.si_ubl, data, LIMITS) == []
    assert profiles.checker.check(profiles.en16931, data, LIMITS) == []


def test_the_sample_order_passes_ubl_order(profiles: Profiles) -> None:
    data = (SAMPLES / "digiinkoop-order.xml").read_bytes()
    assert profiles.checker.check(profiles.order, data, LIMITS) == []
    bad = profiles.checker.check(
        profiles.order, (SAMPLES / "digiinkoop-order-invalid.xml").read_bytes(), LIMITS
    )
    assert rules(bad) == {"XSD"} and [f.location for f in bad][:1] == ["regel 5"]


def test_rule_breaking_invoice_gets_its_rule_ids(profiles: Profiles) -> None:
    data = (SAMPLES / "digiinkoop-factuur-regels.xml").read_bytes()
    findings = profiles.checker.check(profiles.si_ubl, data, LIMITS)
    assert {"BR-NL-1", "BR-NL-2", "BR-CO-16"} <= rules(findings, "fatal")
    nl1 = next(f for f in findings if f.rule == "BR-NL-1")
    assert nl1.location == "/Invoice[1]/cac:AccountingSupplierParty[1]/cac:Party[1]"
    assert nl1.text.startswith("For suppliers in the Netherlands") and nl1.step
    judged = verdict(findings, profile=profiles.si_ubl.label)
    assert (judged.code, judged.foutcode) == ("311", "VAS500")
    assert judged.details is not None
    assert "BR-NL-1 [fatal] For suppliers" in judged.details
    assert judged.details.endswith(
        "validatieprofiel: SI-UBL 2.0 (ubl-2.1 2.1, si-ubl-2.0 2.0.3.12)"
    )
    # EN 16931 alone does not know the Dutch rules
    assert rules(profiles.checker.check(profiles.en16931, data, LIMITS), "fatal") == {"BR-CO-16"}


def test_schema_errors_stop_before_the_rules(profiles: Profiles) -> None:
    data = (SAMPLES / "digiinkoop-factuur-invalid.xml").read_bytes()
    findings = profiles.checker.check(profiles.si_ubl, data, LIMITS)
    assert rules(findings) == {"XSD"} and len(findings) >= 2
    assert [f.location for f in findings][:2] == ["regel 5", "regel 8"]


def test_a_credit_note_uses_the_credit_note_schema(profiles: Profiles) -> None:
    assert STANDARDS is not None
    data = (STANDARDS / "en16931-ubl/ubl/examples/ubl-tc434-creditnote1.xml").read_bytes()
    assert profiles.checker.check(profiles.en16931, data, LIMITS) == []
    order = (SAMPLES / "digiinkoop-order.xml").read_bytes()
    (finding,) = profiles.checker.check(profiles.en16931, order, LIMITS)
    assert finding.rule == "XSD" and "Order" in finding.text


def test_warnings_do_not_refuse(profiles: Profiles) -> None:
    data = (
        (SAMPLES / "digiinkoop-factuur.xml")
        .read_bytes()
        .replace(
            b"<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>",
            b"<cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>\n"
            b"  <cbc:TaxCurrencyCode>EUR</cbc:TaxCurrencyCode>",
        )
    )
    findings = profiles.checker.check(profiles.si_ubl, data, LIMITS)
    assert findings and not [f for f in findings if f.refusing], findings
    assert "BR-NL-19" in rules(findings, "warning")
    judged = verdict(findings, profile="p")
    assert judged.code == "301" and judged.details and "BR-NL-19 [warning]" in judged.details


# --------------------------------------------------------------------------- conformance


def cen_examples() -> list[Path]:
    if STANDARDS is None:
        return []
    return sorted((STANDARDS / "en16931-ubl/ubl/examples").iterdir())


@pytest.mark.parametrize("example", cen_examples(), ids=lambda p: p.name)
def test_every_cen_example_passes_ubl_and_en16931(profiles: Profiles, example: Path) -> None:
    findings = profiles.checker.check(profiles.en16931, example.read_bytes(), LIMITS)
    assert not [f for f in findings if f.refusing], findings


def test_oasis_invoice_example_is_schema_valid_but_breaks_br_01(profiles: Profiles) -> None:
    assert STANDARDS is not None
    data = (STANDARDS / "ubl-2.1/examples/UBL-Invoice-2.1-Example.xml").read_bytes()
    xsd_only = ProfileSpec("UBL", "UBL", (profiles.en16931.steps[0],))
    assert check_document(profiles.checker, xsd_only, data, LIMITS) == []
    findings = profiles.checker.check(profiles.en16931, data, LIMITS)
    assert "BR-01" in rules(findings, "fatal")
    assert verdict(findings, profile="x").code == "311"


@dataclass(frozen=True)
class CenTest:
    file: str
    index: int
    description: str
    expect: tuple[tuple[str, str], ...]  # (error|warning|success, rule)
    fragment: bytes


def cen_tests() -> list[CenTest]:
    if STANDARDS is None:
        return []
    found: list[CenTest] = []
    for folder in ("Invoice-unit-UBL", "CreditNote-unit-UBL"):
        for path in sorted((STANDARDS / "en16931-ubl/test" / folder).glob("*.xml")):
            root = etree.parse(str(path)).getroot()
            for i, test in enumerate(root.iter(f"{VEFA}test")):
                assertion = test.find(f"{VEFA}assert")
                doc = next(
                    (c for c in test if isinstance(c.tag, str) and not c.tag.startswith(VEFA)),
                    None,
                )
                if assertion is None or doc is None:
                    continue
                expect = tuple(
                    (etree.QName(e).localname, (e.text or "").strip())
                    for e in assertion
                    if isinstance(e.tag, str)
                    and etree.QName(e).localname in ("error", "warning", "success")
                )
                description = (assertion.findtext(f"{VEFA}description") or "").strip()
                found.append(
                    CenTest(f"{folder}/{path.name}", i, description, expect, etree.tostring(doc))
                )
    return found


def disagreements(engine: SchematronEngine, xslt: Path, test: CenTest) -> list[str]:
    findings = engine.validate(xslt, test.fragment.decode())
    fatal, warning = rules(findings, "fatal", "error"), rules(findings, "warning")
    wrong = []
    for kind, rule in test.expect:
        ok = {
            "error": rule in fatal,
            "warning": rule in warning,
            "success": rule not in fatal | warning,
        }[kind]
        if not ok:
            wrong.append(f"{test.file}#{test.index} {kind} {rule}: got {sorted(fatal | warning)}")
    return wrong


CEN_TESTS = cen_tests()


def test_cen_conformance(profiles: Profiles) -> None:
    """All of CEN's rule tests for Invoice and CreditNote (about 20 s here): every assert
    agrees (docs/validation.md gives the figure)."""
    sample = CEN_TESTS
    assert len(sample) > 1000
    engine, xslt = profiles.checker.engine, profiles.en16931_xslt
    wrong = [w for t in sample for w in disagreements(engine, xslt, t)]
    asserts = sum(len(t.expect) for t in sample)
    print(f"CEN conformance: {asserts - len(wrong)}/{asserts} asserts agree")
    assert wrong == [], "\n".join(wrong)


# --------------------------------------------------------------------------- SVRL, findings


SVRL_NS = 'xmlns:svrl="http://purl.oclc.org/dsdl/svrl"'
UBL_INVOICE = "urn:oasis:names:specification:ubl:schema:xsd:Invoice-2"
INVOICE_PATH = f"/*:Invoice[namespace-uri()='{UBL_INVOICE}'][1]"


def test_parse_svrl_ids_flags_and_locations() -> None:
    report = f"""<svrl:schematron-output {SVRL_NS}>
      <svrl:fired-rule context="/"/>
      <svrl:failed-assert id="BR-01" flag="fatal" location="{INVOICE_PATH}">
        <svrl:text>[BR-01]-An Invoice shall have a Specification identifier (BT-24).</svrl:text>
      </svrl:failed-assert>
      <svrl:failed-assert flag="warning" location="/x">
        <svrl:text>[BR-NL-19] The use of a tax currency code is not recommended</svrl:text>
      </svrl:failed-assert>
      <svrl:failed-assert location="/y"><svrl:text>no id at all</svrl:text></svrl:failed-assert>
      <svrl:successful-report flag="error" location="/z">
        <svrl:text>[R-9] reported</svrl:text></svrl:successful-report>
    </svrl:schematron-output>"""
    findings = parse_svrl(report, "step 1")
    assert [(f.rule, f.severity, f.location) for f in findings] == [
        ("BR-01", "fatal", "/Invoice[1]"),
        ("BR-NL-19", "warning", "/x"),
        ("SCHEMATRON", "error", "/y"),
        ("R-9", "error", "/z"),
    ]
    assert findings[0].text == "An Invoice shall have a Specification identifier (BT-24)."
    with pytest.raises(SchematronError):
        parse_svrl(b"<!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>")


def test_statusdetails_are_bounded() -> None:
    many = [Finding(f"BR-{i:02}", "fatal", "x" * 5000, "/a" * 1000) for i in range(80)]
    warning = Finding("BR-W", "warning", "w")
    details = format_findings([warning, *many], profile="P 1", max_findings=50)
    lines = details.splitlines()
    assert len(lines) == 52
    assert lines[0].startswith("BR-00 [fatal]")  # refusing findings first
    assert lines[-2] == "... en nog 31 bevinding(en)" and lines[-1] == "validatieprofiel: P 1"
    assert all(len(line) <= 2 * MAX_TEXT + 40 for line in lines)


# --------------------------------------------------------------------------- hostile input


class Refusing(SchematronEngine):
    """An engine that fails the test if any stylesheet is applied."""

    def svrl(self, path: Path, text: str) -> str:
        raise AssertionError("XSLT ran on a hostile document")


@pytest.mark.parametrize("name", ["billion-laughs.xml", "xxe.xml", "malformed.xml"])
def test_hostile_documents_are_refused_before_any_xslt(profiles: Profiles, name: str) -> None:
    checker = Checker(engine=Refusing())
    no_xsd = ProfileSpec("rules", "rules", profiles.si_ubl.schematron)
    findings = check_document(checker, no_xsd, (SAMPLES / name).read_bytes(), LIMITS)
    assert len(findings) == 1 and findings[0].severity == "fatal"
    assert findings[0].rule in {"dtd_forbidden", "malformed"}


@pytest.fixture
def canary() -> Iterator[tuple[str, list[str]]]:
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.end_headers()
            self.wfile.write(b"<leak>CANARY</leak>")

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


def test_saxon_never_resolves_external_resources(
    canary: tuple[str, list[str]], tmp_path: Path
) -> None:
    """Whatever a stylesheet asks (document(), doc(), unparsed-text(), collection(), on
    http: or file:), the processor refuses: no request reaches the canary, no file is read."""
    url, hits = canary
    secret = tmp_path / "secret.xml"
    secret.write_text("<s>SECRET</s>")
    probes = {
        "document": f"string(document('{url}/document'))",
        "doc": f"string(doc('{url}/doc'))",
        "text": f"unparsed-text('{url}/text')",
        "file": f"string(doc('{secret.as_uri()}'))",
        "filetext": f"unparsed-text('{secret.as_uri()}')",
        "collection": f"count(collection('{tmp_path.as_uri()}'))",
        "available": f"string(unparsed-text-available('{secret.as_uri()}'))",
    }
    body = "".join(
        f'<{k}><xsl:try><xsl:value-of select="{v}"/><xsl:catch>refused</xsl:catch></xsl:try></{k}>'
        for k, v in probes.items()
    )
    xsl = tmp_path / "hostile.xsl"
    xsl.write_text(
        '<xsl:stylesheet xmlns:xsl="http://www.w3.org/1999/XSL/Transform" version="3.0">'
        f'<xsl:template match="/"><out>{body}</out></xsl:template></xsl:stylesheet>'
    )
    out = SchematronEngine().svrl(xsl, "<r/>")
    assert "SECRET" not in out and "CANARY" not in out
    assert out.count("refused") == 6 and "<available>false</available>" in out, out
    assert hits == []


def test_documents_pointing_at_a_canary_cause_no_request(
    profiles: Profiles, canary: tuple[str, list[str]]
) -> None:
    url, hits = canary
    data = (SAMPLES / "digiinkoop-factuur.xml").read_bytes()
    data = (
        data.replace(
            b'<?xml version="1.0" encoding="UTF-8"?>\n',
            b'<?xml version="1.0" encoding="UTF-8"?>\n'
            + f'<?xml-stylesheet href="{url}/pi"?>\n'.encode(),
        )
        .replace(
            b"<Invoice ",
            b'<Invoice xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
            b' xmlns:xi="http://www.w3.org/2001/XInclude"'
            + f' xsi:schemaLocation="{UBL_INVOICE} {url}/xsd" '.encode(),
        )
        .replace(b"<cbc:Note>", f'<xi:include href="{url}/xinclude"/><cbc:Note>'.encode(), 1)
    )
    findings = profiles.checker.check(profiles.si_ubl, data, LIMITS)
    assert rules(findings) == {"XSD"}  # xi:include is not a UBL element; nothing fetched
    no_xsd = ProfileSpec("rules", "rules", profiles.si_ubl.schematron)
    profiles.checker.check(no_xsd, data, LIMITS)
    assert hits == []


# --------------------------------------------------------------------------- validate CLI


def test_validate_command_prints_what_the_gateway_records(profiles: Profiles) -> None:
    config = profiles.settings.config_dir / "digipoort.toml"
    runner = CliRunner()
    ok = runner.invoke(
        main,
        [
            "validate",
            "--berichtsoort",
            "DigiInkoop-Factuur",
            "--config",
            str(config),
            str(SAMPLES / "digiinkoop-factuur.xml"),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert "statuscode: 301" in ok.output
    bad = runner.invoke(
        main,
        [
            "validate",
            "--berichtsoort",
            "DigiInkoop-Factuur",
            "--config",
            str(config),
            "--json",
            str(SAMPLES / "digiinkoop-factuur-regels.xml"),
        ],
    )
    assert bad.exit_code == 1, bad.output
    import json

    out = json.loads(bad.output)
    assert out["statuscode"] == "311" and out["foutcode"] == "VAS500"
    assert {"BR-NL-1", "BR-NL-2"} <= {f["rule"] for f in out["findings"]}
    expected = verdict(
        profiles.checker.check(
            profiles.si_ubl, (SAMPLES / "digiinkoop-factuur-regels.xml").read_bytes(), LIMITS
        ),
        profile=profiles.si_ubl.label,
    )
    assert out["statusdetails"] == expected.details
    unknown = runner.invoke(
        main, ["validate", "--berichtsoort", "Nope", "--config", str(config), str(config)]
    )
    assert unknown.exit_code != 0 and "Nope" in unknown.output


# --------------------------------------------------------------------------- workers

ORPHAN_SCRIPT = """
import asyncio, os
from validators.pool import ValidationPool

async def main():
    pool = ValidationPool(2)
    loop = asyncio.get_running_loop()
    executor = pool._pool()
    pids = await asyncio.gather(*(loop.run_in_executor(executor, os.getpid) for _ in range(8)))
    print(" ".join(map(str, sorted(set(pids)))), flush=True)
    os.kill(os.getpid(), 9)

if __name__ == "__main__":
    asyncio.run(main())
"""


def test_workers_end_when_their_gateway_process_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN_SCRIPT)
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=repo
    )
    assert done.returncode == -9, done.stderr
    pids = [int(p) for p in done.stdout.split()]
    assert pids
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{p}").exists() for p in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their parent"
        time.sleep(0.1)
