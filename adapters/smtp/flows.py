"""Which flow (berichtsoort) a recipient address selects. Pure."""

from __future__ import annotations

from digipoort.registry import Berichtsoort, Registry

__all__ = ["resolve_flow", "smime_required"]


def resolve_flow(address: str, domain: str, registry: Registry) -> Berichtsoort | None:
    """``<smtp_address>@<domain>`` or ``<berichtsoort>@<domain>`` (case-insensitive)."""
    local, at, host = address.strip().strip("<>").rpartition("@")
    if not at or not local or host.lower() != domain.lower():
        return None
    local = local.lower()
    by_address = [b for b in registry.berichtsoorten.values() if b.smtp_address == local]
    if len(by_address) == 1:
        return by_address[0]
    by_name = [b for b in registry.berichtsoorten.values() if b.name.lower() == local]
    return by_name[0] if len(by_name) == 1 else None


def smime_required(soort: Berichtsoort) -> bool:
    """The per-berichtsoort switch (``smime_required``, default False)."""
    return soort.smime_required
