"""Commands of the validators package, plugged into ``digipoort`` through the
``digipoort.commands`` entry point group:

* ``digipoort standards install NAME --from PATH_OR_URL [--sha256 HEX] [--version V]``
* ``digipoort standards list``
* ``digipoort standards dev [--from DIR]`` — the sample registry's artefacts, if missing
* ``digipoort validate --berichtsoort X FILE [--json]`` — the findings and status the
  gateway would record, without submitting (the Aansluit Suite's "valideren").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from digipoort.clikit import config_option, settings_from
from digipoort.config import Settings
from digipoort.xmlsafe import XmlLimits
from validators.artefacts import ArtefactError, install, installed
from validators.findings import Finding, Verdict, findings_from_violations, verdict
from validators.profiles import Checker, resolve
from validators.schemas import SchemaError, SchemaRegistry, validate_document
from validators.schematron import SchematronError

__all__ = ["judge_document", "standards", "validate"]


def _artefacts_dir(settings: Settings) -> Path:
    return settings.resolve(settings.validation.artefacts_dir)


@click.group("standards")
def standards() -> None:
    """Official validation artefacts (UBL, EN 16931, SI-UBL) in validation.artefacts_dir."""


@standards.command("install")
@click.argument("name")
@click.option("--from", "source", required=True, help="A release folder, zip file or URL.")
@click.option("--sha256", default=None, help="Expected SHA-256 of the zip (or folder).")
@click.option("--version", "version", default=None, help="Version (default: from the release).")
@click.option("--force", is_flag=True, help="Replace an installed release of that version.")
@config_option
def install_cmd(
    name: str,
    source: str,
    sha256: str | None,
    version: str | None,
    force: bool,
    config_path: Path | None,
) -> None:
    """Install release SOURCE as artefact NAME under NAME/VERSION."""
    target = _artefacts_dir(settings_from(config_path))
    try:
        done = install(target, name, source, sha256=sha256, version=version, force=force)
    except ArtefactError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"installed {done.name} {done.version} in {done.path} (sha256 {done.sha256})")


@standards.command("list")
@click.option("--json", "as_json", is_flag=True)
@config_option
def list_cmd(as_json: bool, config_path: Path | None) -> None:
    """Installed releases."""
    target = _artefacts_dir(settings_from(config_path))
    found = installed(target)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": i.name,
                        "version": i.version,
                        "path": str(i.path),
                        "source": i.source,
                        "sha256": i.sha256,
                        "installed_at": i.installed_at,
                    }
                    for i in found
                ],
                indent=2,
            )
        )
        return
    if not found:
        click.echo(f"no artefacts installed in {target}")
    for i in found:
        click.echo(f"{i.name:<16} {i.version:<12} {i.installed_at or '':<26} {i.source or ''}")


@standards.command("dev")
@click.option("--from", "source", type=click.Path(path_type=Path, file_okay=False), default=None)
@config_option
def dev_cmd(source: Path | None, config_path: Path | None) -> None:
    """Install the sample registry's artefacts (from $DIGIPOORT_STANDARDS or a
    shared/standards folder beside the repository) unless installed."""
    from digipoort.devenv import find_standards, install_sample_artefacts

    found = source or find_standards()
    target = _artefacts_dir(settings_from(config_path))
    if found is None:
        click.echo(
            "no standards release found: set DIGIPOORT_STANDARDS or run"
            " `digipoort standards install NAME --from PATH_OR_URL` (docs/validation.md)"
        )
        return
    try:
        for path in install_sample_artefacts(target, found):
            click.echo(f"installed {path}")
    except ArtefactError as exc:
        raise click.ClickException(str(exc)) from None


def judge_document(
    settings: Settings, berichtsoort: str, data: bytes, checker: Checker | None = None
) -> tuple[Verdict, list[Finding], str | None]:
    """What the validation stage records for ``data`` (limits and MIME aside)."""
    soorten = {b.name: b for b in settings.registry.berichtsoorten}
    soort = soorten.get(berichtsoort)
    if soort is None:
        raise click.ClickException(f"berichtsoort {berichtsoort!r} is not in the registry")
    limits = XmlLimits(
        max_bytes=settings.limits.max_document_bytes, max_depth=settings.limits.max_xml_depth
    )
    max_findings = settings.validation.max_findings
    if soort.validation is not None:
        spec = resolve(soort.validation, _artefacts_dir(settings))
        findings = (checker or Checker()).check(spec, data, limits)
        return (
            verdict(findings, profile=spec.label, max_findings=max_findings),
            findings,
            spec.label,
        )
    schema = None
    if soort.xml and soort.xsd:
        schema = SchemaRegistry([settings.config_dir / "xsd"]).get(soort.xsd)
    violations = validate_document(data, schema, limits) if soort.xml else []
    findings = findings_from_violations(violations, soort.xsd)
    return verdict(findings, profile=None, max_findings=max_findings), findings, None


@click.command("validate")
@click.option("--berichtsoort", required=True)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
def validate(berichtsoort: str, file: Path, as_json: bool, config_path: Path | None) -> None:
    """Validate FILE as BERICHTSOORT without submitting it: the status (301/311), and the
    findings exactly as they would appear in statusdetails. Exit status 1 when refused."""
    settings = settings_from(config_path)
    try:
        judged, findings, profile = judge_document(settings, berichtsoort, file.read_bytes())
    except (ArtefactError, SchemaError, SchematronError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        out: dict[str, Any] = {
            "berichtsoort": berichtsoort,
            "validatieprofiel": profile,
            "statuscode": judged.code,
            "foutcode": judged.foutcode,
            "statusdetails": judged.details,
            "findings": [f.as_json() for f in findings],
        }
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        click.echo(
            f"statuscode: {judged.code}" + (f" {judged.foutcode}" if judged.foutcode else "")
        )
        if profile and not judged.details:
            click.echo(f"validatieprofiel: {profile}")
        if judged.details:
            click.echo(judged.details)
    sys.exit(0 if judged.accepted else 1)
