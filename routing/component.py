"""The ``router`` component: the routing stage consuming ``digipoort.route``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from digipoort.app import Gateway
from digipoort.broker import ROUTE
from routing.router import RoutingStage


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
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

    async def stop() -> None:
        return None

    return stop
