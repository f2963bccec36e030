"""Guards for every HTTP port: a header deadline, a per-IP connection limit, and one
structured log line + one metric for every refusal made by the HTTP layer itself.

aiohttp has no deadline for a request's headers: a client sending one header line every
few seconds keeps a request (and a connection slot) open for ever. ``GuardedSite`` is a
``web.TCPSite`` whose connections pass through a thin protocol wrapper:

* **Header deadline.** From the moment a connection is open (after the TLS handshake on
  TLS ports), and from the first byte of each further request on a kept-alive connection,
  the request's headers must be complete within ``header_timeout`` seconds, else the
  client gets ``408`` and the connection is closed. "Complete" is when aiohttp hands the
  request to the application; reading the body is the application's business (WUS bounds
  it with its own read deadline). An idle kept-alive connection is closed after
  ``idle_timeout`` seconds, silently.
* **Per-IP limit.** At most ``max_per_ip`` open connections per client address; one more
  is answered ``503`` and closed at once. On TLS ports both apply from the end of the
  handshake; the handshake itself must finish within ``header_timeout`` too.
* **Observability.** aiohttp's own refusals — malformed HTTP (400, which aiohttp would
  log with a traceback), unknown path (404), wrong method (405), body over
  ``client_max_size`` (413) — each give one structured log line ``http.refused`` and one
  increment of ``digipoort_http_refusals_total{port,status,reason}``, like the guard's
  own 408/503.

The hook is the site only (``GuardedSite(runner, host, port, guard=HttpGuard("wus"))``):
no aiohttp internals are patched; aiohttp's documented ``Server.request_handler`` is
wrapped and each ``RequestHandler`` gets this module's logger.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from prometheus_client import Counter

__all__ = [
    "HTTP_REFUSALS",
    "METRICS_PORT",
    "GuardedSite",
    "HttpGuard",
    "HttpGuardConfig",
    "refused",
]

HTTP_REFUSALS: Final = Counter(
    "digipoort_http_refusals_total",
    "Requests and connections refused by the HTTP layer (not by an application handler), "
    "by port, HTTP status and reason.",
    ["port", "status", "reason"],
)

_REASON_MAX: Final = 200
_CLOSE: Final = "Connection: close\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class HttpGuardConfig:
    header_timeout: float = 15.0  # seconds for a request's headers
    idle_timeout: float = 60.0  # seconds a kept-alive connection may sit idle
    max_per_ip: int = 100  # open connections per client address


#: The metrics/health port: scrapers and probes, few connections each.
METRICS_PORT: HttpGuardConfig = HttpGuardConfig(max_per_ip=32)


def refused(port: str, status: int, reason: str, **fields: Any) -> None:
    """Record one HTTP-layer refusal: one log line (warning: these are rarely innocent),
    one metric."""
    HTTP_REFUSALS.labels(port, str(status), reason).inc()
    structlog.get_logger(__name__).warning(
        "http.refused", port=port, status=status, reason=reason, **fields
    )


class _AiohttpLog(logging.Logger):
    """The logger aiohttp's RequestHandler writes to: a malformed request becomes one
    ``http.refused`` line (no traceback); anything else aiohttp reports is an error line."""

    def __init__(self, port: str) -> None:
        super().__init__(f"digipoort.httpguard.{port}")
        self.port = port

    def _log(  # type: ignore[override]
        self, level: int, msg: object, args: Any, exc_info: Any = None, **_: Any
    ) -> None:
        exc = exc_info[1] if isinstance(exc_info, tuple) else exc_info
        if isinstance(exc, HttpProcessingError):
            status = exc.code if 400 <= exc.code < 500 else 400
            detail = " ".join(str(exc.message or exc).split())[:_REASON_MAX]
            refused(self.port, status, type(exc).__name__, detail=detail)
        elif level >= logging.WARNING:
            text = str(msg) % args if args else str(msg)
            structlog.get_logger(__name__).error(
                "http.error", port=self.port, message=text[:_REASON_MAX], error=repr(exc)
            )


@dataclass
class HttpGuard:
    """The guard of one port (``port`` names it in logs and metrics)."""

    port: str
    config: HttpGuardConfig = field(default_factory=HttpGuardConfig)
    _per_ip: dict[str, int] = field(default_factory=dict)
    _by_transport: dict[object, _GuardedConnection] = field(default_factory=dict)

    @property
    def connections(self) -> Mapping[str, int]:
        return self._per_ip

    def protocol_factory(self, server: web.Server) -> Callable[[], asyncio.Protocol]:
        logger = _AiohttpLog(self.port)
        handler = server.request_handler

        async def tracked(request: web.BaseRequest) -> web.StreamResponse:
            connection = self._by_transport.get(request.transport)
            if connection is not None:
                connection.request_started()
            try:
                return await handler(request)
            except web.HTTPException as exc:
                if 400 <= exc.status < 500:
                    refused(self.port, exc.status, exc.reason, path=request.path[:_REASON_MAX])
                raise
            finally:
                if connection is not None:
                    connection.request_finished()

        server.request_handler = tracked

        def factory() -> asyncio.Protocol:
            inner = server()
            inner.logger = logger
            return _GuardedConnection(self, inner)

        return factory


class _GuardedConnection(asyncio.Protocol):
    """Forwards everything to aiohttp's RequestHandler; owns the deadlines and the
    per-IP count of one connection."""

    def __init__(self, guard: HttpGuard, inner: RequestHandler) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.ip: str | None = None
        self.active = 0  # requests of this connection inside the application
        self.partial = False  # bytes of a request whose headers are not complete yet
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        guard = self.guard
        if guard._per_ip.get(ip, 0) >= guard.config.max_per_ip:
            refused(guard.port, 503, "too_many_connections_from_ip", ip=ip)
            transport.write(f"HTTP/1.1 503 Service Unavailable\r\n{_CLOSE}".encode())
            transport.close()
            return
        self.ip = ip
        guard._per_ip[ip] = guard._per_ip.get(ip, 0) + 1
        guard._by_transport[transport] = self
        self.partial = True  # the first request's clock starts now
        self._arm(guard.config.header_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.ip is None:
            return  # refused connection
        if data and self.active == 0 and not self.partial:
            self.partial = True  # the next request starts: its headers are due
            self._arm(self.guard.config.header_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self.ip is not None:
            self.inner.eof_received()
        return None  # close the transport (aiohttp's handler does not keep half-open ones)

    def pause_writing(self) -> None:
        if self.ip is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.ip is not None:
            self.inner.resume_writing()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.ip is None:
            return
        self._disarm()
        guard = self.guard
        guard._by_transport.pop(self.transport, None)
        left = guard._per_ip.get(self.ip, 1) - 1
        if left > 0:
            guard._per_ip[self.ip] = left
        else:
            guard._per_ip.pop(self.ip, None)
        self.inner.connection_lost(exc)

    # -- called around each request by the wrapped request handler

    def request_started(self) -> None:
        self.active += 1
        self.partial = False
        self._disarm()

    def request_finished(self) -> None:
        self.active -= 1
        if self.active == 0:
            self._arm(self.guard.config.idle_timeout)

    # -- deadlines

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        transport = self.transport
        if self.active or transport is None or transport.is_closing():
            return
        if self.partial:
            refused(self.guard.port, 408, "header_timeout", ip=self.ip)
            transport.write(f"HTTP/1.1 408 Request Timeout\r\n{_CLOSE}".encode())
        transport.close()


class GuardedSite(web.BaseSite):
    """A TCP site (like ``web.TCPSite``) with an :class:`HttpGuard` on every connection."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        guard: HttpGuard,
        ssl_context: ssl.SSLContext | None = None,
        reuse_port: bool = False,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._host, self._port, self._reuse_port = host, port, reuse_port
        self.guard = guard

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol_factory(server),
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_port=self._reuse_port,
            ssl_handshake_timeout=self.guard.config.header_timeout if self._ssl_context else None,
        )
