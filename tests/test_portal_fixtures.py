"""Shared fixtures for the portal tests: a gateway with the ``portal`` component on a free
port (real mutual TLS with the test PKI) and HTTPS clients holding participant,
operator, revoked or no certificates."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest_asyncio

from digipoort.app import Gateway
from digipoort.pki import client_ssl_context
from digipoort.pki.devpki import OPERATOR_OIN
from tests.support import Env, free_port

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


@pytest_asyncio.fixture(loop_scope="session")
async def run(env: Env) -> AsyncIterator[PortalRun]:
    port = configure(env)
    gw = await env.start_gateway(COMPONENTS)
    yield PortalRun(env, gw, port)


OPERATOR = "operator"
