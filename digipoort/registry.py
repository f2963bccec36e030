"""The registry: participants, berichtsoorten (flows) and who may send what to whom.

This module is pure: the models, and :class:`Registry`, an immutable in-memory snapshot
with the authorisation rules. Persistence lives in :mod:`digipoort.registry_store`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

KOPPELVLAKKEN = ("wus", "smtp", "ftp", "portal")


def _check_oin(value: str) -> str:
    if len(value) != 20 or not value.isdigit():
        raise ValueError(f"not an OIN (20 digits): {value!r}")
    return value


class AfleverEndpoint(BaseModel):
    """How a recipient receives: its own queue (default) or a push to its server."""

    kind: str = "queue"  # queue | wus | smtp | ophaal
    url: str | None = None
    # push (wus): how long failed deliveries are retried before 410; None = the
    # gateway default (settings.aflever.retry_for_hours)
    retry_for_hours: float | None = Field(default=None, gt=0)


class Participant(BaseModel):
    oin: str
    name: str
    roles: list[str] = Field(default_factory=list)
    aflever: AfleverEndpoint = Field(default_factory=AfleverEndpoint)

    _oin = field_validator("oin")(_check_oin)


class ValidationStep(BaseModel):
    """One step of a validation profile: an XSD or a compiled Schematron stylesheet from an
    installed artefact (``digipoort standards install``), by name and version.

    ``paths`` are relative to the artefact's release folder. An XSD step may list several
    main schemas (UBL Invoice and CreditNote): the one whose target namespace is the
    document's root namespace applies. A Schematron step applies each stylesheet listed.
    """

    kind: Literal["xsd", "schematron"]
    artefact: str = Field(min_length=1, max_length=80)
    version: str = Field(min_length=1, max_length=80)
    paths: list[str] = Field(min_length=1)

    @property
    def label(self) -> str:
        return f"{self.artefact} {self.version}"


class ValidationProfile(BaseModel):
    """Ordered validation steps for a berichtsoort: at most one XSD step, first, then
    Schematron steps (docs/validation.md)."""

    name: str = Field(min_length=1, max_length=80)
    steps: list[ValidationStep] = Field(min_length=1)

    @model_validator(mode="after")
    def _xsd_first(self) -> ValidationProfile:
        kinds = [s.kind for s in self.steps]
        if "xsd" in kinds[1:] or kinds.count("xsd") > 1:
            raise ValueError("a validation profile has at most one XSD step, and it comes first")
        return self

    @property
    def label(self) -> str:
        """``SI-UBL 2.0 (ubl-2.1 2.1, si-ubl-2.0 2.0.3.12)``: recorded per envelope."""
        return f"{self.name} ({', '.join(s.label for s in self.steps)})"


class Berichtsoort(BaseModel):
    name: str = Field(max_length=80)
    koppelvlakken: list[str]
    recipients: list[str]
    senders: list[str]
    owner: str | None = None
    copies: list[str] = Field(default_factory=list)
    max_size: int = 20 * 1024 * 1024
    xsd: str | None = None
    validation: ValidationProfile | None = None  # official artefacts (replaces ``xsd``)
    mime_types: list[str] = Field(default_factory=lambda: ["text/xml", "application/xml"])
    xml: bool = True  # the document must be well-formed XML
    smtp_address: str | None = None
    smime_required: bool = False  # SMTP: only S/MIME-signed mails are accepted

    @field_validator("recipients", "senders", "copies")
    @classmethod
    def _oins(cls, values: list[str]) -> list[str]:
        return [_check_oin(v) for v in values]

    @field_validator("koppelvlakken")
    @classmethod
    def _koppelvlakken(cls, values: list[str]) -> list[str]:
        for v in values:
            if v not in KOPPELVLAKKEN:
                raise ValueError(f"unknown koppelvlak {v!r}")
        return values

    @model_validator(mode="after")
    def _owner_default(self) -> Berichtsoort:
        if self.owner is None and self.recipients:
            self.owner = self.recipients[0]
        if self.validation is not None and self.xsd is not None:
            raise ValueError("give either xsd or validation, not both")
        return self


class RegistryConfig(BaseModel):
    participants: list[Participant] = Field(default_factory=list)
    berichtsoorten: list[Berichtsoort] = Field(default_factory=list)


class Weigering(StrEnum):
    """Why an envelope is refused by the registry rules (documented in docs/codes.md)."""

    BERICHTSOORT_ONBEKEND = "berichtsoort_onbekend"
    KOPPELVLAK_NIET_TOEGESTAAN = "koppelvlak_niet_toegestaan"
    AFZENDER_ONBEKEND = "afzender_onbekend"
    AFZENDER_NIET_GEAUTORISEERD = "afzender_niet_geautoriseerd"
    ONTVANGER_NIET_TOEGESTAAN = "ontvanger_niet_toegestaan"


@dataclass(frozen=True)
class Autorisatiefout:
    reden: Weigering
    melding: str


@dataclass(frozen=True)
class Registry:
    participants: dict[str, Participant]
    berichtsoorten: dict[str, Berichtsoort]

    @classmethod
    def from_config(cls, config: RegistryConfig) -> Registry:
        return cls.build(config.participants, config.berichtsoorten)

    @classmethod
    def build(
        cls, participants: Iterable[Participant], berichtsoorten: Iterable[Berichtsoort]
    ) -> Registry:
        return cls(
            participants={p.oin: p for p in participants},
            berichtsoorten={b.name: b for b in berichtsoorten},
        )

    def authorise(
        self,
        *,
        sender_oin: str,
        berichtsoort: str,
        koppelvlak: str,
        ontvanger_oin: str | None,
    ) -> Autorisatiefout | None:
        """Check sender, berichtsoort, koppelvlak and recipient; None when allowed."""
        soort = self.berichtsoorten.get(berichtsoort)
        if soort is None:
            return Autorisatiefout(
                Weigering.BERICHTSOORT_ONBEKEND, f"berichtsoort {berichtsoort!r} is onbekend"
            )
        if sender_oin not in self.participants:
            return Autorisatiefout(
                Weigering.AFZENDER_ONBEKEND, f"afzender {sender_oin} is niet bekend"
            )
        if koppelvlak not in soort.koppelvlakken:
            return Autorisatiefout(
                Weigering.KOPPELVLAK_NIET_TOEGESTAAN,
                f"berichtsoort {berichtsoort} wordt niet via {koppelvlak} aangeleverd",
            )
        if sender_oin not in soort.senders:
            return Autorisatiefout(
                Weigering.AFZENDER_NIET_GEAUTORISEERD,
                f"afzender {sender_oin} mag berichtsoort {berichtsoort} niet aanleveren",
            )
        if ontvanger_oin is not None and ontvanger_oin not in soort.recipients:
            return Autorisatiefout(
                Weigering.ONTVANGER_NIET_TOEGESTAAN,
                f"ontvanger {ontvanger_oin} is niet toegestaan voor berichtsoort {berichtsoort}",
            )
        return None

    def recipients_for(
        self, berichtsoort: str, ontvanger_oin: str | None, copies: Sequence[str] | None = None
    ) -> list[str]:
        """Recipients of an envelope: the addressee (or the flow's recipients) plus the
        copy recipients the flow owner configured (meervoudig doorzenden), deduplicated
        and in a stable order."""
        soort = self.berichtsoorten[berichtsoort]
        primary = [ontvanger_oin] if ontvanger_oin else list(soort.recipients)
        result: list[str] = []
        for oin in [*primary, *(soort.copies if copies is None else copies)]:
            if oin not in result:
                result.append(oin)
        return result

    def berichtsoorten_for_sender(
        self, sender_oin: str, koppelvlak: str | None = None
    ) -> list[str]:
        return sorted(
            b.name
            for b in self.berichtsoorten.values()
            if sender_oin in b.senders and (koppelvlak is None or koppelvlak in b.koppelvlakken)
        )
