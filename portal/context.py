"""What the service functions need from the gateway, in one value."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from digipoort.config import Settings
from digipoort.intake import Intake
from digipoort.payloads import PayloadStore
from digipoort.registry import Registry
from digipoort.registry_store import RegistryHolder
from portal.validation import Validator


@dataclass(frozen=True)
class Context:
    settings: Settings
    pool: asyncpg.Pool
    store: PayloadStore
    registry_holder: RegistryHolder
    intake: Intake | None
    validator: Validator

    @property
    def registry(self) -> Registry:
        return self.registry_holder.current
