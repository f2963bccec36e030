"""Servers a test starts itself: a RabbitMQ node and a PostgreSQL cluster of its own.

Fault tests stop, kill and restart servers; they must never do that to the machine's own
RabbitMQ or PostgreSQL (other processes use them). Everything here lives in a temporary
directory, listens on free loopback ports and is stopped and removed afterwards, also
when the test fails:

    async with rabbit_node() as node, pg_cluster() as pg:
        node.amqp_url, node.management_url, pg.admin_url
        await node.stop(); await node.start()   # or node.kill(), node.restart()
        await pg.stop(); await pg.start()        # or pg.kill(), pg.restart()

Both classes are written for reuse by cluster tests (several nodes sharing a cookie,
``RabbitNode.join`` for a RabbitMQ cluster, ``PgCluster`` with extra ``settings``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from glob import glob
from pathlib import Path

import aio_pika
import asyncpg
import pytest
import pytest_asyncio

from tests.support import Env, free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 120.0


class ServerError(RuntimeError):
    """A server of our own did not do what it was asked (with the tail of its log)."""


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _run(args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd="/",
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ServerError(f"{' '.join(args)}: no answer within {timeout}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise ServerError(f"{' '.join(args)} exited {proc.returncode}: {text[-2000:]}")
    return text


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


# -- RabbitMQ ------------------------------------------------------------------------------


class RabbitNode:
    """One RabbitMQ node in ``base``: own node name, AMQP/management/distribution ports,
    data, logs, plugins file and Erlang cookie (nodes meant to cluster share a cookie)."""

    def __init__(
        self,
        base: Path,
        *,
        name: str | None = None,
        cookie: str | None = None,
        management: bool = True,
    ) -> None:
        self.name = name or f"dptest{uuid.uuid4().hex[:8]}"
        self.nodename = f"{self.name}@localhost"
        self.dir = base / self.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.amqp_port = free_port()
        self.management_port = free_port()
        self.dist_port = free_port()
        self.management = management
        self.cookie = cookie or secrets.token_hex(16)
        cookie_file = self.dir / ".erlang.cookie"
        cookie_file.write_text(self.cookie)
        cookie_file.chmod(0o400)  # Erlang refuses a cookie others can read
        plugins = "[rabbitmq_management]." if management else "[]."
        (self.dir / "enabled_plugins").write_text(plugins + "\n")
        conf = ["loopback_users = none"]
        if management:
            conf += [
                f"management.tcp.port = {self.management_port}",
                "management.tcp.ip = 127.0.0.1",
            ]
        (self.dir / "rabbitmq.conf").write_text("\n".join(conf) + "\n")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = self.dir / "server.log"

    # urls ---------------------------------------------------------------------------------
    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    @property
    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": d,  # the cookie, for the server and for rabbitmqctl alike
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{d}/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",
            "RABBITMQ_PID_FILE": f"{d}/pid",
        }

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # life cycle ---------------------------------------------------------------------------
    async def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the node (fresh or with its data from before) and wait until AMQP (and
        the management API, when enabled) answer."""
        if self.running:
            return
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(RABBIT_BIN / "rabbitmq-server")],
                env=self.env,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: kill() takes all of it
            )
        await self.wait_ready(timeout=timeout)

    async def wait_ready(self, *, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not await self._answers():
            if not self.running:
                raise ServerError(f"RabbitMQ node {self.nodename} exited:\n{_tail(self._log)}")
            if time.monotonic() > deadline:
                raise ServerError(f"RabbitMQ node {self.nodename} not up after {timeout}s")
            await asyncio.sleep(0.3)

    async def _answers(self) -> bool:
        try:  # a plain TCP connect first: aio-pika logs every refused attempt as an error
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.amqp_port), 2
            )
        except (OSError, TimeoutError):
            return False
        writer.close()
        try:
            conn = await aio_pika.connect(self.amqp_url, timeout=2)
        except Exception:
            return False
        await conn.close()
        if not self.management:
            return True
        import aiohttp

        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(
                    f"http://127.0.0.1:{self.management_port}/api/overview",
                    headers={"Authorization": aiohttp.encode_basic_auth("guest", "guest")},
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as resp,
            ):
                return resp.status == 200
        except Exception:
            return False

    async def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <this node> ...`` (only ever against this node)."""
        return await _run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env,
            timeout=timeout,
        )

    async def stop(self, *, timeout: float = 60.0) -> None:
        """Graceful stop of the whole node (its data stays for a later ``start``)."""
        if not self.running:
            return
        try:
            await self.ctl("stop", timeout=timeout)
        except ServerError:
            await self.kill()
            return
        await self._reap(timeout)

    async def kill(self) -> None:
        """SIGKILL the node's processes (the Erlang VM and its helpers)."""
        if self._proc is None:
            return
        _signal_group(self._proc.pid, signal.SIGKILL)
        await self._reap(30)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def stop_app(self) -> None:
        """Stop the RabbitMQ application, the Erlang node stays (connections drop)."""
        await self.ctl("stop_app")

    async def start_app(self, *, timeout: float = START_TIMEOUT) -> None:
        # the listener of the stopped app can take a moment to release its port
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.ctl("start_app", timeout=timeout)
                break
            except ServerError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1)
        await self.wait_ready(timeout=timeout)

    async def join(self, other: RabbitNode) -> None:
        """Join ``other``'s cluster (both nodes must share the cookie)."""
        await self.stop_app()
        await self.ctl("reset")
        await self.ctl("join_cluster", other.nodename)
        await self.start_app()

    async def set_policy(
        self, vhost: str, name: str, pattern: str, definition: dict[str, object]
    ) -> None:
        """A queue policy on this node (e.g. ``{"max-length": 1}`` to make it refuse)."""
        await self.ctl(
            "set_policy", "-p", vhost, "--apply-to", "queues", name, pattern, json.dumps(definition)
        )

    async def add_vhost(self, vhost: str) -> None:
        await self.ctl("add_vhost", vhost)
        await self.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")

    async def _reap(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 30)
        _signal_group(proc.pid, signal.SIGKILL)  # helpers (erl_child_setup, inet_gethost)
        self._proc = None

    async def remove(self) -> None:
        """Kill whatever runs and delete the node's directory."""
        await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def rabbit_node(*, management: bool = True) -> AsyncIterator[RabbitNode]:
    base = Path(tempfile.mkdtemp(prefix="dptest-rabbit-"))
    node = RabbitNode(base, management=management)
    try:
        await node.start()
        yield node
    finally:
        await node.remove()
        shutil.rmtree(base, ignore_errors=True)


class RabbitCluster:
    """Nodes of one RabbitMQ cluster of our own (a shared cookie, joined to the first)."""

    def __init__(self, nodes: list[RabbitNode]) -> None:
        self.nodes = nodes

    def amqp_urls(self, vhost: str = "") -> list[str]:
        suffix = f"/{vhost}" if vhost else ""
        return [f"{n.amqp_url}{suffix}" for n in self.nodes]

    @property
    def management_urls(self) -> list[str]:
        return [n.management_url for n in self.nodes]

    def node_of(self, url: str) -> RabbitNode:
        """The node whose AMQP port ``url`` names."""
        for n in self.nodes:
            if f":{n.amqp_port}" in url:
                return n
        raise LookupError(f"no node of this cluster at {url}")

    @property
    def running(self) -> list[RabbitNode]:
        return [n for n in self.nodes if n.running]


@contextlib.asynccontextmanager
async def rabbit_cluster(size: int = 3) -> AsyncIterator[RabbitCluster]:
    """``size`` nodes started at once, then joined to the first one's cluster; all are
    killed and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="dptest-rabbitcluster-"))
    cookie = secrets.token_hex(16)
    nodes = [RabbitNode(base, cookie=cookie) for _ in range(size)]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        for n in nodes[1:]:
            await n.join(nodes[0])
        yield RabbitCluster(nodes)
    finally:
        for n in nodes:
            await n.remove()
        shutil.rmtree(base, ignore_errors=True)


# -- PostgreSQL ----------------------------------------------------------------------------


def _pg_bin(tool: str) -> str:
    found = sorted(glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if found:
        return found[-1]
    path = shutil.which(tool)
    if path is None:
        raise ServerError(f"PostgreSQL's {tool} is not installed")
    return path


def postgres_available() -> bool:
    try:
        _pg_bin("initdb")
    except ServerError:
        return False
    return True


class PgCluster:
    """One PostgreSQL cluster (``initdb`` + ``pg_ctl``) in its own directory and port, trust
    authentication on loopback. As root the server runs as the ``postgres`` user (or
    ``run_as``), as PostgreSQL refuses to run as root."""

    def __init__(
        self, base: Path, *, settings: dict[str, str] | None = None, run_as: str = "postgres"
    ) -> None:
        self.dir = base
        self.data = base / "data"
        self.port = free_port()
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(base),
            "fsync": "off",  # a killed server loses nothing: the OS keeps its page cache
            "max_connections": "200",
            **(settings or {}),
        }
        self._user = run_as if os.geteuid() == 0 else None
        self._log = base / "server.log"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}"

    def url(self, database: str = "postgres") -> str:
        return f"{self.admin_url}/{database}"

    def _as_user(self, args: list[str]) -> list[str]:
        return ["runuser", "-u", self._user, "--", *args] if self._user else args

    async def init(self) -> None:
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        await _run(
            self._as_user(
                [
                    _pg_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            timeout=120,
        )

    async def start(self, *, timeout: float = START_TIMEOUT) -> None:
        """Start the cluster (``initdb`` first when new) and wait until it answers."""
        if self.running:
            return
        if not self.data.exists():
            await self.init()
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        await _run(
            self._as_user(
                [
                    _pg_bin("pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self._log),
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "-o",
                    f"-p {self.port} {options}",
                    "start",
                ]
            ),
            timeout=timeout + 10,
        )
        await self.wait_ready(timeout=timeout)

    async def wait_ready(self, *, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = await asyncpg.connect(self.url(), timeout=2)
            except Exception:
                if time.monotonic() > deadline:
                    raise ServerError(
                        f"PostgreSQL not up after {timeout}s:\n{_tail(self._log)}"
                    ) from None
                await asyncio.sleep(0.2)
                continue
            await conn.close()
            return

    @property
    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def running(self) -> bool:
        pid = self.postmaster_pid
        return pid is not None and Path(f"/proc/{pid}").exists()

    async def stop(self, *, mode: str = "fast", timeout: float = 60.0) -> None:
        """``pg_ctl stop -m fast|immediate|smart``; connections are closed."""
        if not self.running:
            return
        await _run(
            self._as_user([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"]),
            timeout=timeout,
        )

    async def kill(self) -> None:
        """SIGKILL the postmaster and its backends (a crash; the next start recovers)."""
        pid = self.postmaster_pid
        if pid is None:
            return
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in victims):
            if time.monotonic() > deadline:
                raise ServerError("PostgreSQL processes survived SIGKILL")
            await asyncio.sleep(0.05)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def promote(self, *, timeout: float = 60.0) -> None:
        """``pg_ctl promote``: a standby becomes a primary (waits until it takes writes)."""
        await _run(
            self._as_user(
                [_pg_bin("pg_ctl"), "-D", str(self.data), "-w", "-t", str(int(timeout)), "promote"]
            ),
            timeout=timeout + 10,
        )

    async def sql(self, statement: str) -> None:
        """Run one statement as the superuser on the ``postgres`` database."""
        conn = await asyncpg.connect(self.url(), timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    async def init_standby(self, primary: PgCluster, application_name: str) -> None:
        """This (not yet initialised) cluster as a streaming standby of ``primary``:
        ``pg_basebackup`` of the primary, ``standby.signal`` and a ``primary_conninfo``
        naming ``application_name`` (for ``synchronous_standby_names``)."""
        if self._user:
            pw = pwd.getpwnam(self._user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        await _run(
            self._as_user(
                [
                    _pg_bin("pg_basebackup"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(primary.port),
                    "-U",
                    "postgres",
                    "-D",
                    str(self.data),
                    "-X",
                    "stream",
                    "-R",
                    "--no-sync",
                    "-c",
                    "fast",
                ]
            ),
            timeout=300,
        )
        conninfo = (
            f"host=127.0.0.1 port={primary.port} user=postgres application_name={application_name}"
        )
        with (self.data / "postgresql.auto.conf").open("a") as fh:
            fh.write(f"primary_conninfo = '{conninfo}'\n")

    async def remove(self) -> None:
        try:
            await self.stop(mode="immediate", timeout=30)
        except ServerError:
            await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.asynccontextmanager
async def pg_cluster(*, settings: dict[str, str] | None = None) -> AsyncIterator[PgCluster]:
    # not under pytest's tmp dir: that one is private to root, the server runs as postgres
    cluster = PgCluster(Path(tempfile.mkdtemp(prefix="dptest-pg-")), settings=settings)
    try:
        await cluster.start()
        yield cluster
    finally:
        await cluster.remove()


class PgPair:
    """A primary and a synchronous streaming standby of our own."""

    def __init__(self, primary: PgCluster, standby: PgCluster) -> None:
        self.primary = primary
        self.standby = standby

    def url(self, database: str) -> str:
        """A multi-host URL of both that connects to whichever takes writes."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}"
            f"/{database}?target_session_attrs=read-write"
        )


@contextlib.asynccontextmanager
async def pg_pair(*, application_name: str = "standby1") -> AsyncIterator[PgPair]:
    """A primary with a synchronous standby (``synchronous_standby_names`` names it and
    ``synchronous_commit`` is on: a commit returns once the standby has flushed it)."""
    primary = PgCluster(Path(tempfile.mkdtemp(prefix="dptest-pgprimary-")))
    standby = PgCluster(Path(tempfile.mkdtemp(prefix="dptest-pgstandby-")))
    try:
        await primary.start()
        await standby.init_standby(primary, application_name)
        await standby.start()
        await primary.sql(f"ALTER SYSTEM SET synchronous_standby_names = '{application_name}'")
        await primary.sql("SELECT pg_reload_conf()")

        async def synchronous() -> bool:
            conn = await asyncpg.connect(primary.url(), timeout=10)
            try:
                state = await conn.fetchval(
                    "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
                    application_name,
                )
            finally:
                await conn.close()
            return bool(state == "sync")

        deadline = time.monotonic() + START_TIMEOUT
        while not await synchronous():
            if time.monotonic() > deadline:
                raise ServerError(f"standby not synchronous:\n{_tail(standby._log)}")
            await asyncio.sleep(0.2)
        yield PgPair(primary, standby)
    finally:
        await standby.remove()
        await primary.remove()


# -- a gateway environment on servers of its own ---------------------------------------------


class OwnServers:
    """A RabbitMQ node and a PostgreSQL cluster shared by the tests of a module; each test
    gets its own database (from a template) and vhost on them via :meth:`env`."""

    def __init__(self, rabbit: RabbitNode, pg: PgCluster) -> None:
        self.rabbit = rabbit
        self.pg = pg
        self._template: str | None = None

    async def ensure_up(self) -> None:
        """Start whatever a previous test left stopped."""
        await self.pg.start()
        await self.rabbit.start()

    async def env(self, base: Path, pki: Path) -> Env:
        from tests.support import create_env, create_template

        await self.ensure_up()
        if self._template is None:
            self._template = f"dptest_tpl_{uuid.uuid4().hex[:10]}"
            await create_template(self._template, pg_admin=self.pg.admin_url)
        return await create_env(
            base,
            pki,
            self._template,
            pg_admin=self.pg.admin_url,
            amqp=self.rabbit.amqp_url,
            mgmt=self.rabbit.management_url,
        )


@contextlib.asynccontextmanager
async def own_servers() -> AsyncIterator[OwnServers]:
    async with rabbit_node() as node, pg_cluster() as pg:
        yield OwnServers(node, pg)


@pytest_asyncio.fixture(name="servers", scope="module", loop_scope="session")
async def servers_fixture() -> AsyncIterator[OwnServers]:
    """A node and a cluster for the tests of one module (import this fixture there)."""
    async with own_servers() as s:
        yield s


@pytest_asyncio.fixture(name="own_env", loop_scope="session")
async def own_env_fixture(
    servers: OwnServers, tmp_path_factory: pytest.TempPathFactory, pki_dir: Path
) -> AsyncIterator[Env]:
    """An environment (own database and vhost) on the module's own servers, started
    again first if a previous test left one stopped."""
    e = await servers.env(tmp_path_factory.mktemp("env"), pki_dir)
    try:
        yield e
    finally:
        await e.stop()  # database and vhost go with the servers at the end of the module


def servers_available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists() and postgres_available()
