"""The portal's TLS: the server context and certificate verifier from ``settings.pki``
(the same PKI and revocation as the koppelvlakken), with CRLs re-read periodically."""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from adapters.wus.component import participant_verifier
from digipoort.config import Settings
from digipoort.pki import refresh_crl, server_ssl_context

log = structlog.get_logger(__name__)

CRL_INTERVAL = 60.0


class PortalTls:
    def __init__(self, s: Settings) -> None:
        pki = s.pki
        self._crls = [s.resolve(p) for p in pki.crl_files]
        self.verifier = participant_verifier(s)
        self.context = server_ssl_context(
            s.resolve(pki.cert_file),
            s.resolve(pki.key_file),
            s.resolve(pki.ca_file),
            self._crls[0] if self._crls else None,
            intermediates_file=s.resolve(pki.intermediates_file)
            if pki.intermediates_file
            else None,
        )
        for extra in self._crls[1:]:
            refresh_crl(self.context, extra)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(CRL_INTERVAL)
            try:
                self.verifier.reload_crls()
                for crl in self._crls:
                    refresh_crl(self.context, crl)
            except Exception as exc:
                log.warning("portal.crl_refresh_failed", error=repr(exc))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
