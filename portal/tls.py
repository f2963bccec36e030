"""The portal's TLS: the server context and certificate verifier from ``settings.pki``,
built by :mod:`digipoort.pki.wiring` exactly as for the koppelvlakken, so the portal
shares the process's live revocation service (CRLs and OCSP refreshed in the background,
new CRLs written into the handshake context)."""

from __future__ import annotations

from digipoort.config import Settings
from digipoort.pki.wiring import participant_verifier, revocation_service, server_context


class PortalTls:
    def __init__(self, s: Settings) -> None:
        self._revocation = revocation_service(s)
        self.verifier = participant_verifier(s, port="portal")
        self.context = server_context(s, "portal")

    async def start(self) -> None:
        await self._revocation.start()

    async def stop(self) -> None:
        await self._revocation.stop()
