"""The process: shared resources, the selected components, health and graceful shutdown.

``Gateway`` owns the PostgreSQL pool, the RabbitMQ connection, the payload store and the
registry snapshot, and runs any subset of the components:

* ``intake``    — the intake function, used by the koppelvlak adapters in this process
* ``sweeper``   — republishes unconfirmed hand-offs
* every component registered under the ``digipoort.components`` entry point group, e.g.
  ``validator`` (validators/), ``router`` (routing/), ``wus`` (adapters/wus/). This core
  package imports none of them: they plug in.

Every process serves ``/metrics``, ``/healthz`` and ``/readyz`` on the HTTP port.

Event loop (issue 15 item 6, :func:`event_loop_for`): ``event_loop = "auto"`` runs a process
on uvloop when it is installed and every component is in :data:`UVLOOP_COMPONENTS` — those
without a TLS listener of their own. A process with a TLS port (WUS, SMTP, POP3, FTPS,
portal) keeps asyncio's loop: uvloop has its own TLS protocol, which drops the alert of a
refused handshake (clients see an EOF instead of "unknown CA") and bypasses the refusal
log and metric (:func:`digipoort.pki.tls.install_handshake_alerts` patches asyncio's).
``"asyncio"`` / ``"uvloop"`` force one (``DIGIPOORT_EVENT_LOOP``).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, TypeVar

import asyncpg
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

from digipoort import db, httpguard, metrics, opsmetrics
from digipoort.broker import Broker
from digipoort.config import Settings, redact_url
from digipoort.intake import MARK_DELAY, Intake
from digipoort.payloads import FilePayloadStore
from digipoort.registry import Registry
from digipoort.registry_store import RegistryHolder
from digipoort.worker import BatchConsumer, Handler

log = structlog.get_logger(__name__)

CORE_COMPONENTS = ("intake", "sweeper")
#: components that take submissions and work with the database alone while the broker is
#: away (a process of only these, with the sweeper, stays ready through a broker outage)
FRONT_COMPONENTS = frozenset({"intake", "sweeper", "wus", "smtp", "pop3", "smtpreturns", "ftp"})

#: Components without a TLS listener: a process of only these may run on uvloop.
UVLOOP_COMPONENTS = frozenset(
    {
        "intake",
        "sweeper",
        "validator",
        "router",
        "stages",
        "retention",
        "deadletters",
        "statusreports",
        "deliverer",
        "opsmetrics",
    }
)

T = TypeVar("T")

Component = Callable[["Gateway"], Awaitable[Callable[[], Awaitable[None]]]]
"""A pluggable component (e.g. a koppelvlak adapter): started with the gateway, returns
its stop function."""


def uvloop_available() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def event_loop_for(setting: str, components: Iterable[str]) -> str:
    """``"uvloop"`` or ``"asyncio"`` for a process running ``components``."""
    if setting == "asyncio":
        return "asyncio"
    if setting == "uvloop":
        if not uvloop_available():
            raise RuntimeError("event_loop = uvloop, but uvloop is not installed")
        return "uvloop"
    safe = set(components) <= UVLOOP_COMPONENTS
    return "uvloop" if safe and uvloop_available() else "asyncio"


def run_on(loop: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh event loop of the kind :func:`event_loop_for` chose."""
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def plugin_components() -> dict[str, EntryPoint]:
    """Components registered under the ``digipoort.components`` entry point group."""
    return {ep.name: ep for ep in entry_points(group="digipoort.components")}


def all_components() -> tuple[str, ...]:
    return (*CORE_COMPONENTS, *sorted(plugin_components()))


@dataclass
class Gateway:
    settings: Settings
    components: tuple[str, ...] = CORE_COMPONENTS
    pool: asyncpg.Pool | None = None
    broker: Broker | None = None
    registry: RegistryHolder | None = None
    intake: Intake | None = None
    store: FilePayloadStore | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _stops: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _consumers: list[BatchConsumer] = field(default_factory=list)
    _http: web.AppRunner | None = None

    async def start(self, *, serve_http: bool = True) -> None:
        s = self.settings
        if serve_http:
            await self._start_http()
        self.store = FilePayloadStore(s.resolve(s.storage.payload_dir))
        log.info(
            "connecting",
            database=redact_url(s.database.url),
            broker=[redact_url(u) for u in s.broker.nodes],
        )
        self.pool = await db.create_pool(
            s.database.url, min_size=s.database.pool_min, max_size=s.database.pool_max
        )
        async with self.pool.acquire() as conn:
            await db.migrate(conn)
        self.registry = RegistryHolder(self.pool)
        await self.registry.start()
        self.broker = Broker.from_settings(s.broker)
        await self.broker.connect()
        await self.broker.ensure_aflever_queues(_recipients(self.registry.current))
        self.registry.on_change(self._registry_changed)
        self._tasks.append(
            asyncio.get_running_loop().create_task(
                opsmetrics.run_pool_sampler(self.pool, self.stopping)
            )
        )
        # intake before the adapters that call it
        for name in sorted(self.components, key=lambda n: n != "intake"):
            await self._start_component(name)
        log.info("gateway started", components=list(self.components))

    def _registry_changed(self, registry: Registry) -> None:
        if self.broker is not None:
            task = asyncio.get_running_loop().create_task(
                self.broker.ensure_aflever_queues(_recipients(registry))
            )
            self._tasks.append(task)

    async def _start_component(self, name: str) -> None:
        s = self.settings
        assert self.pool and self.broker and self.registry and self.store
        if name == "intake":
            self.intake = Intake(
                self.pool,
                self.broker,
                self.store,
                self.registry,
                limits=s.limits,
                storage=s.storage,
                max_batch=s.intake.max_batch,
                resubmission_window_seconds=s.intake.resubmission_window_seconds,
                # a confirmed hand-off is recorded well before the sweeper would act on it
                mark_delay=min(MARK_DELAY, s.intake.sweep_grace_seconds / 4),
            )
            await self.intake.start()
            self._stops.append(self.intake.stop)
        elif name == "sweeper":
            from digipoort import sweeper

            task = asyncio.get_running_loop().create_task(
                sweeper.run(
                    self.pool,
                    self.broker,
                    grace_seconds=s.intake.sweep_grace_seconds,
                    interval=s.intake.sweep_interval_seconds,
                    stopping=self.stopping,
                    resubmission_window_seconds=s.intake.resubmission_window_seconds,
                )
            )
            self._tasks.append(task)
        else:
            plugins = plugin_components()
            if name not in plugins:
                raise ValueError(
                    f"unknown component {name!r}; known: {', '.join(all_components())}"
                )
            factory: Component = plugins[name].load()
            self._stops.append(await factory(self))

    async def consume(self, stage: str, handler: Handler) -> None:
        """Run ``handler`` on batches of the work queue of ``stage`` until stop."""
        assert self.broker is not None
        consumer = BatchConsumer(
            self.broker,
            stage,
            handler,
            prefetch=self.settings.broker.prefetch,
            retry_backoff=self.settings.broker.retry_backoff_seconds,
            probe=self.dependencies_up,
            outage_poll=self.settings.broker.outage_poll_seconds,
            gather=self.settings.broker.gather_ms / 1000.0,
        )
        await consumer.start()
        self._consumers.append(consumer)
        self._stops.append(consumer.stop)

    # -- health ---------------------------------------------------------------------------
    async def ready(self) -> tuple[bool, dict[str, bool]]:
        """Ready = this process can do its work now. Every process needs the database, a
        registry that follows changes (its LISTEN connection) and stages not waiting out an
        outage. The broker (connected, and taking publishes: no ``Basic.Nack`` since the
        last confirmed one) is needed too — except by a front that runs its own sweeper:
        intake commits without the broker and the sweeper hands off once it is back, so
        such a process stays ready and reports the broker as a detail."""
        broker = self.broker
        checks = {
            "database": await self._database_up(),
            "broker": bool(broker and broker.connected),
            "publishing": bool(broker and broker.publishing),
            "topology": bool(broker and broker.topology_declared),
            "registry": bool(self.registry and self.registry.listening),
            "stages": not any(c.waiting_for for c in self._consumers),
        }
        optional = {"broker", "publishing"} if self._front_with_sweeper() else set()
        ok = all(v for k, v in checks.items() if k not in optional)
        metrics.READY.set(1 if ok else 0)
        return ok, checks

    def _front_with_sweeper(self) -> bool:
        return "sweeper" in self.components and set(self.components) <= FRONT_COMPONENTS

    async def _database_up(self) -> bool:
        """``SELECT 1`` answers within 2 s. A failure expires the pool's connections, so
        after a database restart the next try gets a fresh one instead of a dead one."""
        if self.pool is None:
            return False
        for _ in range(2):
            try:
                async with asyncio.timeout(2):
                    await self.pool.fetchval("SELECT 1")
            except Exception:
                await self.pool.expire_connections()
            else:
                return True
        return False

    async def dependencies_up(self) -> bool:
        """The probe of a stage waiting out an outage: database and broker answer."""
        return await self._database_up() and bool(self.broker and self.broker.connected)

    async def _start_http(self) -> None:
        app = web.Application()

        async def healthz(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"})

        async def readyz(_: web.Request) -> web.Response:
            ok, checks = await self.ready()
            return web.json_response({"ready": ok, **checks}, status=200 if ok else 503)

        async def metrics_view(_: web.Request) -> web.Response:
            await self.ready()
            if self.pool is not None:
                opsmetrics.sample_pool(self.pool)
            return web.Response(
                body=metrics_exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics_view)
        self._http = web.AppRunner(app, access_log=None)
        await self._http.setup()
        guard = httpguard.HttpGuard("metrics", httpguard.METRICS_PORT)
        site = httpguard.GuardedSite(
            self._http,
            self.settings.http.host,
            self.settings.http.port,
            guard=guard,
            reuse_port=shares_ports(),
        )
        await site.start()

    async def stop(self) -> None:
        """Stop taking work, finish in-flight messages, close connections."""
        self.stopping.set()
        for stop in reversed(self._stops):
            try:
                await stop()
            except Exception as exc:
                log.warning("component stop failed", error=repr(exc))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.registry is not None:
            await self.registry.stop()
        if self.broker is not None:
            await self.broker.close()
        if self.pool is not None:
            await self.pool.close()
        if self._http is not None:
            await self._http.cleanup()
        log.info("gateway stopped")


# Listen backlog of every TCP port: a burst of connects beyond the session caps must be
# accepted and refused with the protocol's "busy" reply, not left waiting in SYN retries.
LISTEN_BACKLOG = 1024


def shares_ports() -> bool:
    """SO_REUSEPORT only for the worker processes of one ``serve --processes N``: any
    other second process on the same port fails to bind instead of silently sharing it."""
    from digipoort.supervisor import CHILD_ENV

    return CHILD_ENV in os.environ


def metrics_exposition() -> bytes:
    """All metrics; under ``serve --processes N`` those of every worker process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry)
    return generate_latest()


def _recipients(registry: Registry) -> Iterable[str]:
    oins: set[str] = set()
    for b in registry.berichtsoorten.values():
        oins.update(b.recipients)
        oins.update(b.copies)
    return sorted(oins)
