"""Conformance mode: a model of Logius' "Aansluit Suite" stub.

Berichtsoort ``TEST``: the aanleverkenmerk selects a scenario (case-insensitive; an
unknown or missing aanleverkenmerk means Happyflow). All security checks of the real
endpoint apply first. The mapping is documented in docs/wus.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

from adapters.wus.codes import Kind
from digipoort.status import Status

__all__ = ["BERICHTSOORT", "SCENARIOS", "Scenario", "scenario_for", "scripted_statuses"]

BERICHTSOORT: Final = "TEST"
#: How long the Zwaarbelast* scenarios hold an answer back (seconds).
ZWAARBELAST_DELAY: float = 3.0


@dataclass(frozen=True)
class Scenario:
    name: str
    # aanleveren: None (accept), or the refusal kind ("malformed" -> ALS100, "overloaded" -> ALS400)
    aanlever_fault: Kind | None = None
    aanlever_delay: bool = False
    # statusinformatie on this kenmerk: None, or the refusal kind
    status_fault: Kind | None = None
    status_delay: bool = False
    # the scripted history after 105, 100, 110, 200, 301: (code, foutcode, details)
    tail: tuple[tuple[str, str | None, str | None], ...] = ()


_DELIVERED: Final = (("405", None, None), ("400", None, None), ("500", None, None))

SCENARIOS: Final[dict[str, Scenario]] = {
    s.name.lower(): s
    for s in (
        Scenario("Happyflow", tail=_DELIVERED),
        Scenario("AanleverFault", aanlever_fault="malformed"),
        Scenario("StatusInformatieFault", status_fault="malformed", tail=_DELIVERED),
        Scenario(
            "Afleverfout",
            tail=(
                ("405", None, None),
                ("410", "AFS100", "De uitvragende partij weigert het bericht"),
            ),
        ),
        Scenario(
            "Foutuitvragendepartij",
            tail=(
                ("405", None, None),
                ("400", None, None),
                ("510", "UVP100", "Het bericht is bij de uitvragende partij afgekeurd"),
            ),
        ),
        Scenario(
            "TechnischProbleemAfleveren",
            tail=(
                ("405", None, None),
                ("420", "AFS400", "De afleverservice van de uitvragende partij is niet bereikbaar"),
            ),
        ),
        Scenario(
            "MaximaalAantalAfleverpogingen",
            tail=(
                ("405", None, None),
                ("420", "AFS400", "Afleverpoging 1 mislukt"),
                ("420", "AFS400", "Afleverpoging 2 mislukt"),
                ("420", "AFS400", "Afleverpoging 3 mislukt"),
                ("410", "AFS600", "Maximaal aantal afleverpogingen bereikt"),
            ),
        ),
        Scenario("ZwaarbelastAanleveren", aanlever_delay=True, tail=_DELIVERED),
        Scenario("OverbelastAanleveren", aanlever_fault="overloaded"),
        Scenario("ZwaarbelastStatusInformatie", status_delay=True, tail=_DELIVERED),
        Scenario("OverbelastStatusInformatie", status_fault="overloaded", tail=_DELIVERED),
    )
}

_HEAD: Final = ("105", "100", "110", "200", "301")
_FAILING: Final = frozenset({"410", "420", "510"})


def scenario_for(aanleverkenmerk: str | None) -> Scenario:
    return SCENARIOS.get((aanleverkenmerk or "").strip().lower(), SCENARIOS["happyflow"])


def scripted_statuses(
    scenario: Scenario, kenmerk: UUID, start: datetime, recipient_oin: str
) -> list[Status]:
    """The complete history of a conformance envelope, 10 ms apart like the real stub."""
    history: list[Status] = []
    for i, code in enumerate(_HEAD):
        history.append(Status(kenmerk, code, start + timedelta(milliseconds=10 * i)))
    for j, (code, foutcode, details) in enumerate(scenario.tail, start=len(_HEAD)):
        history.append(
            Status(
                kenmerk,
                code,
                start + timedelta(milliseconds=10 * j),
                recipient_oin=recipient_oin,
                foutcode=foutcode,
                foutbeschrijving=details if code in _FAILING else None,
                details=details if code == "510" else None,
            )
        )
    return history
