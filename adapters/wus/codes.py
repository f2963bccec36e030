"""Which foutcode every WUS refusal gets (documented in docs/wus.md).

A refusal has a *kind*; the aanleverservice answers with ``ALS<n>`` in an aanleverFault,
the statusinformatieservice with ``STS<n>`` in a statusinformatieFault, where ``<n>`` is
the same number for the same kind. Faults are SOAP 1.1 faults shaped like the observed
Digipoort ones (``digipoort.wus.soap.build_fault``) and are not signed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

__all__ = ["FAULT_NUMBERS", "Refusal", "foutcode"]

Kind = Literal[
    "malformed",  # not per the interface specification (SOAP, WS-Addressing, XSD, base64)
    "authentication",  # signing certificate not trusted / OIN differs from the TLS OIN
    "signature",  # WS-Security header or XML signature not acceptable
    "timestamp",  # wsu:Timestamp stale / in the future, or a replayed wsa:MessageID
    "berichtsoort",  # unknown berichtsoort (or not offered over WUS)
    "authorisation",  # not allowed: sender/recipient rules, or someone else's kenmerk
    "too_large",  # request, inhoud or number of bijlagen over the limit
    "technical",  # our problem (database, broker): retry later
    "overloaded",  # conformance scenario Overbelast*: retry later
]

FAULT_NUMBERS: Final[dict[str, tuple[str, Literal["soapenv:Client", "soapenv:Server"]]]] = {
    "malformed": ("100", "soapenv:Client"),
    "authentication": ("110", "soapenv:Client"),
    "signature": ("120", "soapenv:Client"),
    "timestamp": ("130", "soapenv:Client"),
    "berichtsoort": ("140", "soapenv:Client"),
    "authorisation": ("150", "soapenv:Client"),
    "too_large": ("160", "soapenv:Client"),
    "technical": ("400", "soapenv:Server"),
    "overloaded": ("400", "soapenv:Server"),
}

SPEC_TEXT: Final = (
    "Het verzoek voldoet niet aan de koppelvlakspecificaties en kan hierdoor niet door "
    "Digipoort worden verwerkt.\n\nDe volgende fout is opgetreden: \n\n"
)
_TEXTS: Final[dict[str, str]] = {
    "malformed": SPEC_TEXT,
    "authentication": "Authenticatie niet gelukt: het certificaat van de ondertekening wordt "
    "niet geaccepteerd.\n\n",
    "signature": "De WS-Security ondertekening van het verzoek is niet geldig.\n\n",
    "timestamp": "Het verzoek is verlopen of is al eerder ontvangen (wsu:Timestamp, "
    "wsa:MessageID).\n\n",
    "berichtsoort": "De berichtsoort is onbekend.\n\n",
    "authorisation": "Niet geautoriseerd.\n\n",
    "too_large": "Het verzoek is te groot.\n\n",
    "technical": "Er is een technische fout opgetreden. Probeer het later opnieuw.\n\n",
    "overloaded": "Digipoort is overbelast. Probeer het later opnieuw.\n\n",
}


@dataclass
class Refusal(Exception):
    """Refuse the request. ``reason`` is a short machine code for logs and metrics (never
    sent); ``detail`` is appended to the foutbeschrijving only when ``public``."""

    kind: Kind
    reason: str
    detail: str = ""
    public: bool = True

    def __post_init__(self) -> None:
        Exception.__init__(self, f"{self.kind}/{self.reason}: {self.detail}")

    def foutbeschrijving(self) -> str:
        text = _TEXTS[self.kind]
        return text + self.detail if self.public and self.detail else text


def foutcode(prefix: Literal["ALS", "STS"], kind: str) -> str:
    return prefix + FAULT_NUMBERS[kind][0]
