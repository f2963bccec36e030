"""Status codes (what the sender sees via the statusinformatieservice) and their texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

OMSCHRIJVINGEN: dict[str, str] = {
    "105": "Aanleverproces gestart",
    "100": "Aanleveren gelukt",
    "110": "Aanleverproces wordt aangeboden",
    "200": "Authenticatie gelukt",
    "210": "Authenticatie niet gelukt",
    "220": "Autorisatie niet gelukt",
    "230": "Technisch probleem bij autorisatie",
    "301": "Validatie gelukt",
    "311": "Validatie niet gelukt",
    "321": "Technisch probleem bij validatie",
    "405": "Afleveren naar uitvragende partij bezig",
    "400": "Afleveren uitvragende partij gelukt",
    "402": "Groot bericht opgehaald door uitvragende partij",
    "410": "Afleveren niet gelukt",
    "420": "Technisch probleem bij afleverservice uitvragende partij",
    "500": "Validatie bij de uitvragende partij gelukt",
    "510": "Validatie bij de uitvragende partij niet gelukt",
}

END_STATES = frozenset({"210", "220", "230", "311", "321", "410"})


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Status:
    """One entry of an envelope's history (per recipient for the 4xx/5xx codes)."""

    kenmerk: UUID
    code: str
    tijdstempel: datetime = field(default_factory=now)
    recipient_oin: str | None = None
    foutcode: str | None = None
    foutbeschrijving: str | None = None
    details: str | None = None
    omschrijving: str = ""

    def __post_init__(self) -> None:
        if not self.omschrijving:
            object.__setattr__(self, "omschrijving", OMSCHRIJVINGEN.get(self.code, self.code))
