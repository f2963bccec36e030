"""The ``validator`` component: the validation stage consuming ``digipoort.validate``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from digipoort.app import Gateway
from digipoort.broker import VALIDATE
from digipoort.xmlsafe import XmlLimits
from validators.pool import shared_pool
from validators.profileset import ProfileSet
from validators.schemas import SchemaRegistry
from validators.stage import ValidationStage


async def start(gateway: Gateway) -> Callable[[], Awaitable[None]]:
    s = gateway.settings
    assert gateway.pool and gateway.broker and gateway.registry and gateway.store
    profiles = ProfileSet(s.resolve(s.validation.artefacts_dir), shared_pool(s.validation.workers))
    profiles.refresh(gateway.registry.current)
    gateway.registry.on_change(profiles.refresh)
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
        max_findings=s.validation.max_findings,
    )
    await gateway.consume(VALIDATE, stage.handle)

    async def stop() -> None:
        await profiles.close()  # the consumer is stopped by the gateway

    return stop
