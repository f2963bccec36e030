"""The ``stages`` component (alias ``validator``): validation and routing in one stage.

It consumes ``digipoort.validate`` (new envelopes from intake) and also the former
``digipoort.route`` queue, so work items an older version (or a not yet upgraded
validator during a rolling upgrade) put there are still routed: nothing is lost at the
upgrade and nobody has to drain by hand. A consumer on an empty queue costs nothing.

Scaling: run as many ``stages`` processes as needed; they are competing consumers of the
same queues and each does the whole of an envelope (docs/reliability.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from digipoort.app import Gateway
from digipoort.broker import ROUTE, VALIDATE
from digipoort.xmlsafe import XmlLimits
from routing.router import RoutingStage
from validators.pool import shared_pool
from validators.profileset import ProfileSet
from validators.schemas import SchemaRegistry
from validators.stage import ValidationStage

#: the names under which this one stage can be selected (``--components``)
STAGE_NAMES = ("stages", "validator")


async def _noop() -> None:
    return None


async def start_stages(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool and gateway.broker and gateway.registry and gateway.store
    profiles = ProfileSet(s.resolve(s.validation.artefacts_dir), shared_pool(s.validation.workers))
    profiles.refresh(gateway.registry.current)
    gateway.registry.on_change(profiles.refresh)
    router = RoutingStage(
        gateway.pool,
        gateway.broker,
        gateway.store,
        gateway.registry,
        grote_berichten=s.grote_berichten,
        public_url=s.wus.public_url,
    )
    stage = ValidationStage(
        gateway.pool,
        gateway.broker,
        gateway.store,
        gateway.registry,
        SchemaRegistry([s.config_dir / "xsd"]),
        xml_limits=XmlLimits(
            max_bytes=s.limits.max_document_bytes, max_depth=s.limits.max_xml_depth
        ),
        profiles=profiles,
        router=router,
        max_findings=s.validation.max_findings,
    )
    await gateway.consume(VALIDATE, stage.handle)
    # the former route queue: the same handler routes validated envelopes found there
    await gateway.consume(ROUTE, stage.handle)

    async def stop() -> None:
        await profiles.close()  # the consumers are stopped by the gateway

    return stop


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    """``validator``: the old name of ``stages`` (started once when both are selected)."""
    if "stages" in gateway.components:
        return _noop
    return await start_stages(gateway)
