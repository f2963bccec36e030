"""Shared fixtures for the portal tests: a gateway with the ``portal`` component on a free
port (real mutual TLS with the test PKI) and HTTPS clients holding participant,
operator, revoked or no certificates.

``run`` is module-scoped: one environment (database, vhost) and one gateway serve all
tests of a module, so the tests of a module never assume an empty world — each finds its
own envelopes by kenmerk or by a unique aanleverkenmerk."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
import pytest
import pytest_asyncio

from digipoort.app import Gateway
from digipoort.broker import DEAD_QUEUE, DEAD_QUEUE_HEADER, DEAD_REASON, DEAD_STAGE
from digipoort.pki import client_ssl_context
from digipoort.pki.devpki import OPERATOR_OIN
from tests.support import Env, create_env, destroy_env, free_port

COMPONENTS = (
    "intake",
    "sweeper",
    "validator",
    "router",
    "deadletters",
    "statusreports",
    "deliverer",
    "portal",
)


@dataclass
class PortalRun:
    env: Env
    gateway: Gateway
    port: int

    @property
    def url(self) -> str:
        return f"https://localhost:{self.port}"

    @property
    def pki(self) -> Path:
        return self.env.dir / "pki"

    def ssl(self, stem: str | None) -> ssl.SSLContext:
        pki = self.pki
        if stem is None:
            return client_ssl_context(None, None, pki / "ca.crt")
        return client_ssl_context(pki / f"{stem}.crt", pki / f"{stem}.key", pki / "ca.crt")

    def session(self, stem: str | None) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            base_url=self.url, connector=aiohttp.TCPConnector(ssl=self.ssl(stem))
        )

    async def csrf(self, session: aiohttp.ClientSession) -> str:
        async with session.get("/api/v1/me") as resp:
            assert resp.status == 200
            data: dict[str, Any] = await resp.json()
            return str(data["csrf_token"])


def configure(env: Env) -> int:
    port = free_port()
    env.settings.portal.port = port
    env.settings.portal.public_url = f"https://localhost:{port}"
    env.settings.portal.operators = [OPERATOR_OIN]
    env.settings.portal.csrf_secret = "test-secret"
    return port


#: documents above this travel as Grote Berichten references (small, so the tests' several
#: MiB uploads are delivered by reference without sending hundreds of MiB)
GB_THRESHOLD = 512 * 1024


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(
    tmp_path_factory: pytest.TempPathFactory, pki_dir: Path, template_db: str
) -> AsyncIterator[PortalRun]:
    env = await create_env(tmp_path_factory.mktemp("portal"), pki_dir, template_db)
    try:
        port = configure(env)
        env.settings.grote_berichten.threshold_bytes = GB_THRESHOLD
        gw = await env.start_gateway(COMPONENTS)
        yield PortalRun(env, gw, port)
    finally:
        await destroy_env(env)


OPERATOR = "operator"


async def put_dead_letter(
    amqp_url: str, kenmerk: str, reason: str = "routing table locked"
) -> None:
    """A work item of the route stage in ``digipoort.dead``, as the stage leaves one."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps({"kenmerk": kenmerk}).encode(),
                message_id=kenmerk,
                headers={
                    DEAD_STAGE: "route",
                    DEAD_QUEUE_HEADER: "digipoort.route",
                    DEAD_REASON: reason,
                },
            ),
            routing_key=DEAD_QUEUE,
        )
    finally:
        await connection.close()
