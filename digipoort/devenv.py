"""``digipoort dev init``: a ready-to-run development environment in one directory.

Writes ``digipoort.toml`` (config and the sample registry) and a test PKI under ``pki/``,
and installs the official validation artefacts the sample registry's e-invoicing
berichtsoorten use (UBL 2.1, EN 16931, SI-UBL 2.0) into ``standards/`` from
``$DIGIPOORT_STANDARDS`` or a ``shared/standards`` folder next to the repository, when
present (docs/validation.md). Re-running keeps existing keys, artefacts and an existing
config unless ``force``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from digipoort.pki.devpki import OPERATOR_OIN, DevParticipant, create_dev_pki

SAMPLE_PARTICIPANTS: list[tuple[str, str, list[str]]] = [
    ("00000099100000010000", "Leverancier Alfa BV", ["sender", "recipient"]),
    ("00000099100000020000", "Intermediair Beta BV", ["sender", "intermediary"]),
    # role "rijksoverheid": central government, not charged by metering (docs/portal.md)
    ("00000099200000010000", "Belastingdienst (test)", ["recipient", "rijksoverheid"]),
    ("00000099200000020000", "CBS (test)", ["recipient", "flow-owner", "rijksoverheid"]),
    ("00000099200000030000", "HBAG (test)", ["recipient"]),
    (
        "00000099200000040000",
        "Rijksdienst Inkoop (test)",
        ["recipient", "sender", "rijksoverheid"],
    ),
    ("00000099200000050000", "Douane (test)", ["recipient", "rijksoverheid"]),
    ("00000099200000060000", "De Nederlandsche Bank (test)", ["recipient"]),
]

ALFA, BETA = "00000099100000010000", "00000099100000020000"
BELASTINGDIENST, CBS, HBAG = "00000099200000010000", "00000099200000020000", "00000099200000030000"
RIJKSDIENST_INKOOP, DOUANE, DNB = (
    "00000099200000040000",
    "00000099200000050000",
    "00000099200000060000",
)

# How sample participants receive, when not from their own queue (docs/afleveren.md):
# Alfa fetches its DigiInkoop orders from the Ophaalservice.
SAMPLE_AFLEVER: dict[str, str] = {
    ALFA: '[registry.participants.aflever]\nkind = "ophaal"\n',
}

#: The artefacts of the sample registry: (name, version, folder in the standards release).
SAMPLE_ARTEFACTS: list[tuple[str, str, str]] = [
    ("ubl-2.1", "2.1", "ubl-2.1"),
    ("en16931-ubl", "1.3.16", "en16931-ubl"),
    ("si-ubl-2.0", "2.0.3.12", "si-ubl-2.0"),
]

_UBL_XSD = """\
[[registry.berichtsoorten.validation.steps]]
kind = "xsd"
artefact = "ubl-2.1"
version = "2.1"
paths = ["xsd/maindoc/UBL-Invoice-2.1.xsd", "xsd/maindoc/UBL-CreditNote-2.1.xsd"]
"""

CONFIG_TEMPLATE = """\
# Digipoort gateway — development environment written by `digipoort dev init`.
# Every value can be overridden by an environment variable: DIGIPOORT_<SECTION>__<KEY>,
# e.g. DIGIPOORT_DATABASE__URL. Relative paths are relative to this file.

gateway_oin = "00000099300000010000"
gateway_name = "Digipoort (test)"
log_level = "info"

[database]
url = "{database_url}"

[broker]
url = "{broker_url}"
management_url = "{management_url}"

[storage]
payload_dir = "data/payloads"

[pki]
ca_file = "pki/ca.crt"
crl_files = ["pki/ca.crl", "pki/root.crl"]
intermediates_file = "pki/chain.pem"
cert_file = "pki/server.crt"
key_file = "pki/server.key"
# `digipoort dev pki-server` serves the CRLs and OCSP named in the dev certificates
responder_port = 8089

[pki.revocation]
refresh_seconds = 60
unknown_status = "fail_closed"

[http]
host = "127.0.0.1"
port = {http_port}

[wus]
host = "127.0.0.1"
port = {wus_port}
public_url = "https://localhost:{wus_port}"
allow_sha1 = true

[smtp]
host = "127.0.0.1"
port = {smtp_port}
domain = "digipoort.test"

[pop3]
host = "127.0.0.1"
port = {pop3_port}

[ftp]
host = "127.0.0.1"
port = {ftp_port}
passive_port_min = {ftp_passive_min}
passive_port_max = {ftp_passive_max}
root_dir = "data/ftp"

[portal]
host = "127.0.0.1"
port = {portal_port}
public_url = "https://localhost:{portal_port}"
operators = ["{operator}"]   # pki/operator.crt

# ---- sample registry (test OINs) -------------------------------------------------------
{participants}
[[registry.berichtsoorten]]
name = "Omzetbelasting"
koppelvlakken = ["wus"]
recipients = ["{bd}"]
senders = ["{alfa}", "{beta}"]
max_size = 20971520
# no XSD: the document must only be well-formed XML

[[registry.berichtsoorten]]
name = "CBS-Detailhandel"
koppelvlakken = ["wus", "smtp", "ftp", "portal"]
recipients = ["{cbs}"]
owner = "{cbs}"
copies = ["{hbag}"]          # meervoudig doorzenden, set by CBS as flow owner
senders = ["{alfa}", "{beta}"]
xsd = "cbs-detailhandel.xsd"
max_size = 10485760
smtp_address = "cbs-detailhandel"

# e-factureren: UBL 2.1 invoices and credit notes under SI-UBL 2.0 (NLCIUS + EN 16931),
# the official artefacts installed in validation.artefacts_dir (docs/validation.md)
[[registry.berichtsoorten]]
name = "DigiInkoop-Factuur"
koppelvlakken = ["wus", "smtp", "ftp", "portal"]
recipients = ["{ri}"]
senders = ["{alfa}"]
max_size = 20971520
smtp_address = "digiinkoop-factuur"

[registry.berichtsoorten.validation]
name = "SI-UBL 2.0"
{ubl_xsd}
[[registry.berichtsoorten.validation.steps]]
kind = "schematron"
artefact = "si-ubl-2.0"
version = "2.0.3.12"
paths = ["xsl/si-ubl-2.0.xsl"]

[[registry.berichtsoorten]]
name = "DigiInkoop-Order"
koppelvlakken = ["wus"]
recipients = ["{alfa}"]
senders = ["{ri}"]
max_size = 20971520

[registry.berichtsoorten.validation]
name = "UBL 2.1 Order"

[[registry.berichtsoorten.validation.steps]]
kind = "xsd"
artefact = "ubl-2.1"
version = "2.1"
paths = ["xsd/maindoc/UBL-Order-2.1.xsd"]

[[registry.berichtsoorten]]
name = "e-Factuur-EN16931"
koppelvlakken = ["wus", "smtp", "ftp"]
recipients = ["{ri}"]
senders = ["{alfa}"]
max_size = 20971520
smtp_address = "e-factuur-en16931"

[registry.berichtsoorten.validation]
name = "EN 16931"
{ubl_xsd}
[[registry.berichtsoorten.validation.steps]]
kind = "schematron"
artefact = "en16931-ubl"
version = "1.3.16"
paths = ["ubl/xslt/EN16931-UBL-validation.xslt"]

[[registry.berichtsoorten]]
name = "Douane-Uitvoer"
koppelvlakken = ["smtp"]
recipients = ["{douane}"]
senders = ["{alfa}"]
max_size = 16777216
smtp_address = "douane-uitvoer"

[[registry.berichtsoorten]]
name = "DNB-DGS"
koppelvlakken = ["ftp"]
recipients = ["{dnb}"]
senders = ["{alfa}"]
max_size = 4294967296
xml = false
mime_types = []
"""


def render_config(
    *,
    database_url: str = "postgresql://postgres@127.0.0.1:5432/digipoort",
    broker_url: str = "amqp://guest:guest@127.0.0.1:5672/digipoort",
    management_url: str = "http://guest:guest@127.0.0.1:15672",
    http_port: int = 9464,
    wus_port: int = 8443,
    smtp_port: int = 8587,
    pop3_port: int = 8110,
    ftp_port: int = 8021,
    ftp_passive_min: int = 30000,
    ftp_passive_max: int = 30100,
    portal_port: int = 8444,
) -> str:
    participants = "".join(
        f'[[registry.participants]]\noin = "{oin}"\nname = "{name}"\nroles = {roles!r}\n'.replace(
            "'", '"'
        )
        + SAMPLE_AFLEVER.get(oin, "")
        + "\n"
        for oin, name, roles in SAMPLE_PARTICIPANTS
    )
    return CONFIG_TEMPLATE.format(
        database_url=database_url,
        broker_url=broker_url,
        management_url=management_url,
        http_port=http_port,
        wus_port=wus_port,
        smtp_port=smtp_port,
        pop3_port=pop3_port,
        ftp_port=ftp_port,
        ftp_passive_min=ftp_passive_min,
        ftp_passive_max=ftp_passive_max,
        portal_port=portal_port,
        operator=OPERATOR_OIN,
        participants=participants,
        ubl_xsd=_UBL_XSD,
        alfa=ALFA,
        beta=BETA,
        bd=BELASTINGDIENST,
        cbs=CBS,
        hbag=HBAG,
        ri=RIJKSDIENST_INKOOP,
        douane=DOUANE,
        dnb=DNB,
    )


def init_dev_env(directory: Path, *, force: bool = False, **config: object) -> list[Path]:
    """Create (or complete) the environment; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    cfg = directory / "digipoort.toml"
    if force or not cfg.exists():
        cfg.write_text(render_config(**config), encoding="utf-8")  # type: ignore[arg-type]
        written.append(cfg)
    (directory / "data" / "payloads").mkdir(parents=True, exist_ok=True)
    participants = [DevParticipant(oin=o, name=n) for o, n, _ in SAMPLE_PARTICIPANTS]
    written += create_dev_pki(directory / "pki", participants, force=force)
    source = find_standards()
    if source is not None:
        written += install_sample_artefacts(directory / "standards", source)
    return written


def find_standards(start: Path | None = None) -> Path | None:
    """The official standards release folder: ``$DIGIPOORT_STANDARDS``, else the first
    ``shared/standards`` beside the repository or one of its parents."""
    env = os.environ.get("DIGIPOORT_STANDARDS")
    if env:
        return Path(env) if Path(env).is_dir() else None
    here = (start or Path(__file__)).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "standards"
        if candidate.is_dir():
            return candidate
    return None


def link_sample_artefacts(artefacts_dir: Path, source: Path) -> None:
    """Tests and benchmarks: the sample artefacts as symlinks into ``source`` (no copy)."""
    for name, version, folder in SAMPLE_ARTEFACTS:
        link = artefacts_dir / name / version
        if not link.exists() and (source / folder).is_dir():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to((source / folder).resolve(), target_is_directory=True)


def install_sample_artefacts(artefacts_dir: Path, source: Path) -> list[Path]:
    """Install the sample registry's artefacts from ``source`` (skipping installed ones)."""
    # validators plugs into digipoort; the import stays local to the dev environment.
    artefacts = importlib.import_module("validators.artefacts")
    written: list[Path] = []
    for name, version, folder in SAMPLE_ARTEFACTS:
        if (artefacts_dir / name / version).is_dir() or not (source / folder).is_dir():
            continue
        done = artefacts.install(artefacts_dir, name, str(source / folder), version=version)
        written.append(done.path)
    return written
