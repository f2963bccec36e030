"""The ``router`` component: kept for deployments that still select it.

Routing is done by the ``stages`` component (validators/component.py) together with
validation. ``router`` alone consumes only the former ``digipoort.route`` queue (work
items of a validator of an older version: a rolling upgrade, or a queue that still held
messages at the upgrade); in a process that also runs ``stages``/``validator`` it does
nothing, as that stage consumes ``digipoort.route`` itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from digipoort.app import Gateway
from digipoort.broker import ROUTE
from routing.router import RoutingStage
from validators.component import STAGE_NAMES


async def _noop() -> None:
    return None


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    if any(name in gateway.components for name in STAGE_NAMES):
        return _noop
    assert gateway.pool and gateway.broker and gateway.registry and gateway.store
    stage = RoutingStage(
        gateway.pool,
        gateway.broker,
        gateway.store,
        gateway.registry,
        grote_berichten=gateway.settings.grote_berichten,
        public_url=gateway.settings.wus.public_url,
    )
    await gateway.consume(ROUTE, stage.handle)
    return _noop
