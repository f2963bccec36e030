"""The validation profiles of the berichtsoorten in the registry, started or refused.

When the validator starts, and whenever the registry changes, :meth:`ProfileSet.refresh`
locates each profile's files in the artefacts directory (missing file → the berichtsoort
is *not started*: one error log line naming the file) and compiles them in the worker
processes in the background (a schema or stylesheet that does not compile → not started,
logged the same way). The gateway itself keeps running; envelopes of a berichtsoort that
is not started get 321 ``VAS400`` and the log says why. Envelopes arriving while the
profile still compiles wait for it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import structlog

from digipoort.registry import Registry, ValidationProfile
from validators.artefacts import ArtefactError
from validators.pool import ValidationPool
from validators.profiles import ProfileSpec, resolve

__all__ = ["ProfileSet", "ProfileUnavailable"]


class ProfileUnavailable(Exception):
    """The berichtsoort's profile could not be started (the message says why)."""


@dataclass
class _State:
    profile: ValidationProfile
    ready: asyncio.Future[ProfileSpec]


class ProfileSet:
    def __init__(self, artefacts_dir: Path, pool: ValidationPool) -> None:
        self.artefacts_dir = artefacts_dir
        self.pool = pool
        self._states: dict[str, _State] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def refresh(self, registry: Registry) -> None:
        """Start (or restart, when changed) the profile of every berichtsoort."""
        loop = asyncio.get_running_loop()
        wanted = {n: b.validation for n, b in registry.berichtsoorten.items() if b.validation}
        for name in list(self._states):
            if name not in wanted:
                del self._states[name]
        for name, profile in wanted.items():
            state = self._states.get(name)
            if state is not None and state.profile == profile:
                continue
            ready: asyncio.Future[ProfileSpec] = loop.create_future()
            self._states[name] = _State(profile, ready)
            try:
                spec = resolve(profile, self.artefacts_dir)
            except ArtefactError as exc:
                self._refuse(name, ready, str(exc))
                continue
            task = loop.create_task(self._prepare(name, spec, ready))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _prepare(
        self, name: str, spec: ProfileSpec, ready: asyncio.Future[ProfileSpec]
    ) -> None:
        try:
            await self.pool.prepare(spec)
        except Exception as exc:
            self._refuse(name, ready, str(exc) or repr(exc))
            return
        structlog.get_logger(__name__).info(
            "validatieprofiel gestart", berichtsoort=name, profiel=spec.label
        )
        if not ready.done():
            ready.set_result(spec)

    def _refuse(self, name: str, ready: asyncio.Future[ProfileSpec], reason: str) -> None:
        log = structlog.get_logger(__name__)  # (not cached: tests capture it)
        log.error(
            "berichtsoort niet gestart: validatieprofiel onbruikbaar",
            berichtsoort=name,
            reden=reason,
        )
        if not ready.done():
            ready.set_exception(ProfileUnavailable(f"berichtsoort {name}: {reason}"))
            ready.exception()  # retrieved: no "never retrieved" warning if nobody asks

    async def get(self, name: str) -> ProfileSpec:
        """The started profile of ``name`` (waits while it compiles)."""
        state = self._states.get(name)
        if state is None:
            raise ProfileUnavailable(f"berichtsoort {name}: no validation profile")
        return await asyncio.shield(state.ready)

    async def wait(self) -> dict[str, str | None]:
        """Wait until every profile started or was refused: name → None or the reason."""
        result: dict[str, str | None] = {}
        for name, state in list(self._states.items()):
            try:
                await asyncio.shield(state.ready)
                result[name] = None
            except ProfileUnavailable as exc:
                result[name] = str(exc)
        return result

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
