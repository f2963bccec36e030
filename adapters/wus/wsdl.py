"""The published WSDLs and koppelvlak XSD, served with our endpoint address.

``specs/`` holds byte-identical copies of the published files. Serving changes exactly
two things: the soap:address location (our endpoint) and the XSD import's
schemaLocation (an absolute URL on the same endpoint, ``?xsd=digipoort-koppelvlak-1.2.xsd``).
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from typing import Final

__all__ = [
    "AANLEVER_PATH",
    "OPHAAL_PATH",
    "SERVICES",
    "STATUSSERVICE_PATH",
    "STATUS_PATH",
    "XSD_NAME",
    "Service",
    "render_wsdl",
    "xsd",
]

AANLEVER_PATH: Final = "/wus/2.0/aanleverservice/1.2"
STATUS_PATH: Final = "/wus/2.0/statusinformatieservice/1.2"
# No published WSDL for these two: specs/wsdl/ holds ours, written in the published style.
OPHAAL_PATH: Final = "/wus/2.0/ophaalservice/1.2"
STATUSSERVICE_PATH: Final = "/wus/2.0/statusservice/1.2"
XSD_NAME: Final = "digipoort-koppelvlak-1.2.xsd"
_PUBLISHED_HOST: Final = "https://dgp.procesinfrastructuur.nl"
_PUBLISHED_IMPORT: Final = f'schemaLocation="../{XSD_NAME}"'


@dataclass(frozen=True)
class Service:
    name: str  # "aanleverservice" | "statusinformatieservice" | "ophaalservice" | ...
    path: str
    wsdl_file: str
    fault_element: str
    foutcode_prefix: str  # "ALS" | "STS" | "OHS" | "ZSS"


SERVICES: Final = {
    AANLEVER_PATH: Service(
        "aanleverservice", AANLEVER_PATH, "aanleverservice-1.2.wsdl", "aanleverFault", "ALS"
    ),
    STATUS_PATH: Service(
        "statusinformatieservice",
        STATUS_PATH,
        "statusinformatieservice-1.2.wsdl",
        "statusinformatieFault",
        "STS",
    ),
    OPHAAL_PATH: Service(
        "ophaalservice", OPHAAL_PATH, "ophaalservice-1.2.wsdl", "ophaalFault", "OHS"
    ),
    STATUSSERVICE_PATH: Service(
        "statusservice", STATUSSERVICE_PATH, "statusservice-1.2.wsdl", "zetStatusFault", "ZSS"
    ),
}


def _specs() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("adapters.wus") / "specs"


@cache
def published_wsdl(service: Service) -> str:
    return (_specs() / "wsdl" / service.wsdl_file).read_text(encoding="utf-8")


@cache
def xsd() -> bytes:
    return (_specs() / XSD_NAME).read_bytes()


@cache
def render_wsdl(service: Service, public_url: str) -> bytes:
    base = public_url.rstrip("/")
    text = published_wsdl(service)
    published_location = f'location="{_PUBLISHED_HOST}{service.path}"'
    if published_location not in text or _PUBLISHED_IMPORT not in text:
        raise RuntimeError(f"{service.wsdl_file}: unexpected published WSDL")
    text = text.replace(published_location, f'location="{base}{service.path}"')
    text = text.replace(_PUBLISHED_IMPORT, f'schemaLocation="{base}{service.path}?xsd={XSD_NAME}"')
    return text.encode("utf-8")
