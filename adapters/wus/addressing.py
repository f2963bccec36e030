"""wsa:To compared as a URL, not as a string (docs/wus.md, "wsa:To").

Clients write the gateway's address in many equivalent ways: ``HTTPS://DGP.example.nl``,
``https://dgp.example.nl:443/…``, with or without a trailing slash. Two addresses are the
same endpoint when scheme and host agree case-insensitively, the port agrees with the
scheme's default filled in, and the paths agree without trailing slashes (paths, query
strings and fragments are case-sensitive, as in RFC 3986). A gateway reached under several
names lists them in ``wus.accepted_urls``; ``wus.public_url`` is always accepted.
Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, NamedTuple
from urllib.parse import urlsplit

__all__ = ["EndpointAddresses", "EndpointKey", "endpoint_key"]

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
#: A wsa:To longer than this is not compared at all (never one of ours).
MAX_ADDRESS: Final = 2048


class EndpointKey(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str
    query: str


def endpoint_key(url: str) -> EndpointKey | None:
    """The comparable form of an http(s) URL; None if it is not one."""
    if len(url) > MAX_ADDRESS:
        return None
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        port = parts.port
    except ValueError:  # e.g. a port out of range or not a number
        return None
    host = (parts.hostname or "").rstrip(".")
    if scheme not in _DEFAULT_PORTS or not host or parts.fragment or parts.username:
        return None
    return EndpointKey(
        scheme,
        host,
        port if port is not None else _DEFAULT_PORTS[scheme],
        parts.path.rstrip("/"),
        parts.query,
    )


class EndpointAddresses:
    """The public base URLs this gateway answers to; which service paths are ours."""

    def __init__(self, public_url: str, accepted_urls: Iterable[str] = ()) -> None:
        self.bases = [public_url.rstrip("/"), *(u.rstrip("/") for u in accepted_urls)]
        for base in self.bases:
            if endpoint_key(base) is None:
                raise ValueError(f"not an http(s) URL: {base!r}")

    def keys_for(self, service_path: str) -> frozenset[EndpointKey]:
        keys = (endpoint_key(base + service_path) for base in self.bases)
        return frozenset(k for k in keys if k is not None)

    def is_service(self, to: str, service_path: str) -> bool:
        """Is ``to`` (a wsa:To) the address of ``service_path`` under one of our bases?"""
        key = endpoint_key(to)
        return key is not None and key in self.keys_for(service_path)
