"""Configuration: one TOML file plus ``DIGIPOORT_*`` environment variables.

Environment variables override the file; nested keys use a double underscore, e.g.
``DIGIPOORT_DATABASE__URL`` or ``DIGIPOORT_BROKER__URL``. Relative paths in the file are
resolved against the file's directory, so a dev environment can be moved as a whole.
Secrets (database and broker passwords inside URLs) are never logged: use
:func:`redact_url` whenever a URL is shown.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from digipoort.registry import RegistryConfig


class DatabaseConfig(BaseModel):
    # Several hosts for a failover pair/cluster (docs/operations.md, "PostgreSQL failover"):
    # postgresql://user@db1:5432,db2:5432/digipoort?target_session_attrs=read-write
    url: str = "postgresql://postgres@127.0.0.1:5432/digipoort"
    pool_min: int = 2
    pool_max: int = 10


def _url_list(value: object) -> object:
    """A list of URLs from the environment: JSON (``["amqp://a/v", "amqp://b/v"]``) or
    comma-separated (``amqp://a/v,amqp://b/v``)."""
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [u.strip() for u in value.split(",") if u.strip()]
    return value


class BrokerConfig(BaseModel):
    # One node: ``url``. A cluster (docs/operations.md, "RabbitMQ cluster"): ``urls``, one
    # per node (same vhost and user; only host and port differ); every process connects
    # to any node that answers and moves on to another when its node dies. When ``urls``
    # is set it wins and ``url`` becomes its first entry (``nodes`` is the list in effect).
    url: str = "amqp://guest:guest@127.0.0.1:5672/digipoort"
    urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    management_url: str = "http://guest:guest@127.0.0.1:15672"
    # the management API of each node (the same rule as url/urls)
    management_urls: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # x-quorum-initial-group-size of new quorum queues; unset: 3 when urls lists 3 or
    # more nodes, else the broker's default (every node)
    quorum_initial_group_size: int | None = Field(default=None, ge=1, le=99)
    # a connection attempt to one node gives up after this long (then the next node)
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    # pause between rounds over all nodes while none answers
    reconnect_seconds: float = Field(default=5.0, gt=0)
    prefetch: int = 256
    # A stage that finds fewer messages waiting than a batch holds waits this long for
    # more (one timer per batch, no polling), so light load batches too; 0 = no window.
    gather_ms: float = Field(default=2.0, ge=0, le=100)
    delivery_limit: int = 5
    # A message that fails (not an outage: see docs/reliability.md) returns to the queue
    # after this long, doubling per delivery (capped at 60 s).
    retry_backoff_seconds: float = 2.0
    # Through a database or broker outage a stage holds its work and probes this often
    # (at most), resuming as soon as both answer.
    outage_poll_seconds: float = 1.0
    # A publish not confirmed within this time counts as failed (the sweeper republishes).
    publish_timeout_seconds: float = 10.0

    @field_validator("urls", "management_urls", mode="before")
    @classmethod
    def _split_urls(cls, value: object) -> object:
        return _url_list(value)

    @model_validator(mode="after")
    def _first_is_url(self) -> BrokerConfig:
        if self.urls:
            self.url = self.urls[0]
        if self.management_urls:
            self.management_url = self.management_urls[0]
        return self

    @property
    def nodes(self) -> list[str]:
        """The AMQP URL of every node: ``urls``, or ``[url]`` for one node."""
        return list(self.urls) if self.urls else [self.url]

    @property
    def management_nodes(self) -> list[str]:
        """The management API of every node: ``management_urls`` or ``[management_url]``."""
        return list(self.management_urls) if self.management_urls else [self.management_url]

    @property
    def quorum_group_size(self) -> int | None:
        """The initial group size new quorum queues are declared with (None: not set)."""
        if self.quorum_initial_group_size is not None:
            return self.quorum_initial_group_size
        return 3 if len(self.nodes) >= 3 else None


class StorageConfig(BaseModel):
    payload_dir: Path = Path("data/payloads")
    # Documents up to this size are stored in PostgreSQL next to the envelope (one commit);
    # larger ones stream to the payload store (fsync'ed files, content-addressed).
    db_inline_limit: int = 256 * 1024
    # afleverRequest documents for recipients carry inhoud inline up to this size.
    aflever_inline_limit: int = 4 * 1024 * 1024


class RevocationConfig(BaseModel):
    """The process's revocation service (docs/pki.md, "Revocation")."""

    # Fetch CRLs from certificates' CRL distribution points and ask OCSP responders (AIA).
    fetch: bool = True
    # Re-fetch each CRL / OCSP answer after this long (or before its nextUpdate if sooner).
    refresh_seconds: float = Field(default=300.0, gt=0)
    timeout_seconds: float = Field(default=5.0, gt=0)
    max_bytes: int = Field(default=10 * 1024 * 1024, gt=0)
    # No current CRL or OCSP answer: refuse (production) or accept, log and count (dev).
    unknown_status: Literal["fail_closed", "soft_fail"] = "fail_closed"


class PkiConfig(BaseModel):
    ca_file: Path = Path("pki/ca.crt")
    crl_files: list[Path] = Field(default_factory=lambda: [Path("pki/ca.crl")])
    intermediates_file: Path | None = Path("pki/chain.pem")
    cert_file: Path = Path("pki/server.crt")
    key_file: Path = Path("pki/server.key")
    # A participant's issuer must have a current CRL or OCSP answer (see unknown_status).
    require_crl: bool = True
    revocation: RevocationConfig = Field(default_factory=RevocationConfig)
    # `digipoort dev pki-server` / the `pkiserver` component: CRLs and OCSP of the dev PKI.
    responder_host: str = "127.0.0.1"
    responder_port: int = 8089


class HttpConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 9464


class WusConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8443
    public_url: str = "https://localhost:8443"
    # Further public base URLs accepted in wsa:To (a gateway reached under several names).
    accepted_urls: list[str] = []
    allow_sha1: bool = True
    max_clock_skew_seconds: int = 300
    max_request_bytes: int = 30 * 1024 * 1024
    # HTTP guard (docs/wus-security.md): headers due within this after connect / first byte,
    # idle kept-alive connections closed after idle_timeout, open connections per client IP.
    header_timeout_seconds: float = 15.0
    idle_timeout_seconds: float = 60.0
    max_connections_per_ip: int = 100
    # The Aansluit Suite stub: berichtsoort TEST, aanleverkenmerk selects a scenario.
    conformance: bool = True


class SmtpConfig(BaseModel):
    """SMTP-MSA submission (STARTTLS + client certificate) and the SMTP relay."""

    host: str = "127.0.0.1"
    port: int = 8587
    domain: str = "digipoort.test"  # flow addresses are <berichtsoort>@<domain>
    max_message_bytes: int = 20 * 1024 * 1024
    max_sessions: int = 100
    timeout_seconds: float = 60.0
    max_recipients: int = 10
    max_parts: int = 100


class Pop3Config(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8110
    timeout_seconds: float = 300.0
    max_sessions: int = 100


class FtpConfig(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8021
    passive_port_min: int = 30000
    passive_port_max: int = 30100
    # Advertised address for passive mode (the address clients connect to).
    public_host: str = "127.0.0.1"
    root_dir: Path = Path("data/ftp")
    partial_ttl_seconds: float = 24 * 3600
    quota_bytes: int = 10 * 1024**3
    max_sessions: int = 50
    timeout_seconds: float = 300.0


class AfleverConfig(BaseModel):
    """Push delivery (WUS AfleverService, SMTP relay): retries and circuit breaker."""

    retry_for_hours: float = 72.0
    base_delay_seconds: float = 5.0
    max_delay_seconds: float = 900.0
    timeout_seconds: float = 30.0
    breaker_failures: int = 5
    breaker_reset_seconds: float = 60.0


class GroteBerichtenConfig(BaseModel):
    """Digikoppeling Grote Berichten: large payloads fetched by reference over HTTPS."""

    # afleverRequests carry documents larger than this as a reference
    threshold_bytes: int = 4 * 1024 * 1024
    expiration_hours: float = 7 * 24
    # payloads of fully delivered envelopes are removed this long after the last fetch
    retention_hours: float = 7 * 24


class HistoryConfig(BaseModel):
    """History partitions and retention (docs/reliability.md, "Retention and partitions"):
    the ``retention`` component creates monthly partitions ahead and purges whole months
    once every envelope in them is past its berichtsoort's retention after its last status."""

    # months kept after the last status, unless the berichtsoort has its own below
    retention_months: int = Field(default=13, ge=1, le=1200)
    retention_months_per_berichtsoort: dict[str, int] = Field(default_factory=dict)
    # partitions exist for the current month and this many months ahead
    months_ahead: int = Field(default=3, ge=1, le=24)
    # purge expired months automatically (false: only `digipoort history purge`)
    purge: bool = True
    # when set, each month is exported here (gzipped CSV + manifest) before it is purged
    export_dir: Path | None = None
    # DETACH/ATTACH wait at most this long for their lock per attempt (then retry)
    lock_timeout_ms: int = Field(default=200, ge=10, le=10_000)


class IntakeConfig(BaseModel):
    max_batch: int = 256
    # A submission whose hand-off to RabbitMQ was not confirmed is republished by the
    # sweeper once it is older than this.
    sweep_grace_seconds: float = 10.0
    # A long interval (issue 15 item 5: no busy polling); a sweep that finds a full batch
    # sweeps again at once, so a backlog (broker outage) drains at full speed.
    sweep_interval_seconds: float = 30.0
    # Idempotent resubmission (docs/reliability.md): the same sender, berichtsoort,
    # aanleverkenmerk and documents within this many seconds get the original kenmerk
    # back instead of a new envelope. 0 disables it.
    resubmission_window_seconds: float = Field(default=24 * 3600.0, ge=0)


class LimitsConfig(BaseModel):
    max_document_bytes: int = 20 * 1024 * 1024
    max_bijlagen: int = 100
    max_xml_depth: int = 256


class ValidationConfig(BaseModel):
    """Validation profiles (docs/validation.md): where official artefacts are installed and
    the worker processes that run the Schematron rules."""

    artefacts_dir: Path = Path("standards")
    # worker processes for Schematron; 0 = one per core
    workers: int = Field(default=0, ge=0, le=64)
    # findings listed in statusdetails at most
    max_findings: int = Field(default=50, ge=1, le=1000)


class PortalConfig(BaseModel):
    """The ``portal`` component: supplier portal, Aansluit Suite, operator console, REST API
    on its own HTTPS port with mutual TLS (docs/portal.md)."""

    host: str = "127.0.0.1"
    port: int = 8444
    public_url: str = "https://localhost:8444"
    # operators: by OIN or by SHA-256 fingerprint of the certificate (lowercase hex)
    operators: list[str] = Field(default_factory=list)
    # signs the CSRF tokens; empty: a random secret per process (set it with --processes N)
    csrf_secret: str = ""
    max_upload_bytes: int = 20 * 1024 * 1024
    max_bijlagen: int = 10
    page_size: int = 50
    # requests per caller per minute (token bucket), answered 429 beyond
    rate_limit_per_minute: int = 600
    # metering: EUR per message for organisations outside central government
    tariff_eur: str = "0.59"


# -- archive (issue 16 part 4; docs/archive.md) ----------------------------------------------
class ArchiveConfig(BaseModel):
    """The write-once non-repudiation archive: what was received and answered, per day."""

    enabled: bool = True
    dir: Path = Path("data/archive")
    # fsync every batch before the answer is sent (off only for throwaway dev setups)
    fsync: bool = True
    segment_max_bytes: int = Field(default=1024**3, ge=1024 * 1024)
    # WUS operations archived (status queries are not evidence of a submission)
    wus_operations: list[str] = Field(default_factory=lambda: ["aanleveren", "zetStatus"])
    # days are closed (manifest signed, files made read-only) this long after midnight UTC
    close_grace_seconds: float = Field(default=300.0, ge=0)
    # closed days older than this are purged (cover the retention period of the envelopes)
    retention_days: int = Field(default=400, ge=1)
    # the writer thread closes and purges days itself (else: `digipoort archive close`)
    maintenance: bool = True
    maintenance_interval_seconds: float = Field(default=60.0, gt=0)
    # optional RFC 3161 time-stamping authority for each day's manifest signature
    tsa_url: str = ""
    tsa_timeout_seconds: float = Field(default=10.0, gt=0)
    # the TSA's certificate must be issued by (or be) one of these (PEM); unset: not checked
    tsa_ca_file: Path | None = None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DIGIPOORT_", env_nested_delimiter="__", extra="ignore"
    )

    gateway_oin: str = "00000099300000010000"
    gateway_name: str = "Digipoort (test)"
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    pki: PkiConfig = Field(default_factory=PkiConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    wus: WusConfig = Field(default_factory=WusConfig)
    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    pop3: Pop3Config = Field(default_factory=Pop3Config)
    ftp: FtpConfig = Field(default_factory=FtpConfig)
    aflever: AfleverConfig = Field(default_factory=AfleverConfig)
    grote_berichten: GroteBerichtenConfig = Field(default_factory=GroteBerichtenConfig)
    history: HistoryConfig = Field(default_factory=HistoryConfig)
    intake: IntakeConfig = Field(default_factory=IntakeConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    portal: PortalConfig = Field(default_factory=PortalConfig)
    archive: ArchiveConfig = Field(default_factory=ArchiveConfig)
    log_level: str = "info"
    # auto: uvloop for processes without a TLS listener (digipoort.app.event_loop_for)
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    config_dir: Path = Path(".")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment first (highest priority), then values passed in (from the file).
        return env_settings, init_settings

    def resolve(self, path: Path) -> Path:
        return path if path.is_absolute() else (self.config_dir / path).resolve()


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``path`` (or ``$DIGIPOORT_CONFIG``) and the environment."""
    if path is None and os.environ.get("DIGIPOORT_CONFIG"):
        path = Path(os.environ["DIGIPOORT_CONFIG"])
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        data["config_dir"] = path.resolve().parent
    data.update(overrides)
    return Settings(**data)


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and error messages (also a multi-host
    URL such as ``postgresql://u:pw@db1:5432,db2:5432/x``)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{hosts}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_hosts(url: str) -> list[str]:
    """The ``host:port`` entries of a (possibly multi-host) URL, e.g. ``["db1:5432",
    "db2:5432"]``; a missing port stays missing."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    return [h for h in netloc.split(",") if h] or ["127.0.0.1"]
