"""Creating what the gateway needs on a fresh server: its database and its vhost."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
import asyncpg
import structlog

log = structlog.get_logger(__name__)


def _database_name(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/")) or "postgres"
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    return name, admin


def admin_url(url: str) -> str:
    """The URL of the server's ``postgres`` database (to create the database of ``url``)."""
    return _database_name(url)[1]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if missing; True if it was created."""
    name, admin_url = _database_name(url)
    conn = await asyncpg.connect(admin_url)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        await conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
        log.info("database created", database=name)
        return True
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    name, admin_url = _database_name(url)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")
    finally:
        await conn.close()


def vhost_of(amqp_url: str) -> str:
    path = urlsplit(amqp_url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


class Management:
    """A small client of RabbitMQ's management HTTP API. Given the API of several nodes
    of a cluster it asks the one that answered last, and on a connection failure the
    next (every node serves the whole cluster's state)."""

    def __init__(self, management_url: str | Sequence[str]) -> None:
        urls = [management_url] if isinstance(management_url, str) else list(management_url)
        if not urls:
            raise ValueError("no management URL configured (broker.management_urls)")
        self._nodes = [self._node(u) for u in urls]
        self._current = 0

    @staticmethod
    def _node(management_url: str) -> tuple[str, dict[str, str]]:
        parts = urlsplit(management_url)
        base = urlunsplit(
            (
                parts.scheme,
                f"{parts.hostname}:{parts.port or 15672}",
                parts.path.rstrip("/"),
                "",
                "",
            )
        )
        user = unquote(parts.username or "guest")
        password = unquote(parts.password or "guest")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        return base, {"Authorization": f"Basic {token}"}

    @property
    def base(self) -> str:
        """The base URL of the node asked (no credentials)."""
        return self._nodes[self._current][0]

    @property
    def headers(self) -> dict[str, str]:
        return self._nodes[self._current][1]

    async def request(self, method: str, path: str, json: object | None = None) -> object:
        last: BaseException | None = None
        for _ in range(len(self._nodes)):
            try:
                return await self._request(method, path, json)
            except (aiohttp.ClientConnectionError, TimeoutError, OSError) as exc:
                last = exc
                log.warning("management API not available", node=self.base, error=repr(exc))
                self._current = (self._current + 1) % len(self._nodes)
        assert last is not None
        raise last

    async def _request(self, method: str, path: str, json: object | None) -> object:
        async with (
            aiohttp.ClientSession(headers=self.headers) as session,
            session.request(
                method, f"{self.base}/api{path}", json=json, timeout=aiohttp.ClientTimeout(total=30)
            ) as resp,
        ):
            if resp.status >= 400 and not (method == "DELETE" and resp.status == 404):
                text = await resp.text()
                raise RuntimeError(f"management API {method} {path}: {resp.status} {text[:200]}")
            if resp.content_type == "application/json":
                return await resp.json()
            return None

    async def ensure_vhost(self, vhost: str, user: str = "guest") -> None:
        v = quote(vhost, safe="")
        await self.request("PUT", f"/vhosts/{v}")
        await self.request(
            "PUT",
            f"/permissions/{v}/{quote(user, safe='')}",
            {"configure": ".*", "write": ".*", "read": ".*"},
        )

    async def delete_vhost(self, vhost: str) -> None:
        await self.request("DELETE", f"/vhosts/{quote(vhost, safe='')}")

    async def queue(self, vhost: str, name: str) -> dict[str, object]:
        result = await self.request(
            "GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}"
        )
        assert isinstance(result, dict)
        return result
