"""Checks of what a command needs before it changes anything: PostgreSQL (reachable, the
login accepted, the database present), RabbitMQ (AMQP login and vhost; the management
API for ``setup``) and free listening ports.

Each failure is a :class:`PrerequisiteError`: one sentence saying what is wrong and what
to do, plus a stable ``code`` for scripts. Passwords never appear (URLs are redacted).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Sequence
from urllib.parse import unquote, urlsplit

import aiohttp
import asyncpg

from digipoort.config import redact_url, url_hosts

TIMEOUT = 10.0


class PrerequisiteError(Exception):
    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _where(url: str) -> str:
    """``host:port`` of ``url``; ``h1:p1,h2:p2`` of a multi-host URL."""
    return ",".join(url_hosts(url))


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == errno.ECONNREFUSED:
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def translate(exc: BaseException, url: str) -> PrerequisiteError | None:
    """A PostgreSQL failure as one line (``url`` names the server; may be empty)."""
    where = f" at {_where(url)}" if url else ""
    user = unquote(urlsplit(url).username or "") if url else ""
    name = unquote(urlsplit(url).path.lstrip("/")) if url else ""
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        what = f"database {name!r}" if name else "the database"
        return PrerequisiteError(
            f"{what} does not exist{where}: run `digipoort setup --config …` first",
            "database-missing",
        )
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        who = f" of user {user!r}" if user else ""
        return PrerequisiteError(
            f"PostgreSQL{where} refused the login{who}: {exc} "
            "(check database.url or DIGIPOORT_DATABASE__URL)",
            "database-auth",
        )
    if isinstance(exc, asyncpg.exceptions.TargetServerAttributeNotMatched):
        return PrerequisiteError(
            f"no PostgreSQL host{where} takes writes (each is a standby or read-only): "
            "promote one, or fix database.url / DIGIPOORT_DATABASE__URL",
            "database-read-only",
        )
    if url and isinstance(exc, OSError | TimeoutError):
        return PrerequisiteError(
            f"PostgreSQL is not reachable{where} ({_reason(exc)}): start it, or fix "
            "database.url / DIGIPOORT_DATABASE__URL",
            "database-unreachable",
        )
    return None


async def check_database(url: str) -> None:
    """Connect to the database of ``url`` (it must exist) and close again."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url), TIMEOUT)
    except (
        asyncpg.PostgresError,
        asyncpg.exceptions.TargetServerAttributeNotMatched,
        OSError,
        TimeoutError,
    ) as exc:
        error = translate(exc, url)
        if error is None:
            raise
        raise error from exc
    await conn.close()


async def check_broker(
    url: str | Sequence[str],
    *,
    setting: str = "broker.url",
    env: str = "DIGIPOORT_BROKER__URL",
) -> None:
    """Open an AMQP connection to ``url`` (login and vhost) and close it again. Given the
    nodes of a cluster, one node that takes the connection is enough; a refused login or
    vhost is reported at once (every node has the same users and vhosts)."""
    urls = [url] if isinstance(url, str) else list(url)
    if len(urls) > 1 and setting == "broker.url":
        setting, env = "broker.urls", "DIGIPOORT_BROKER__URLS"
    unreachable: list[PrerequisiteError] = []
    for one in urls:
        try:
            await _check_broker_node(one, setting=setting, env=env)
        except PrerequisiteError as exc:
            if exc.code != "broker-unreachable":
                raise
            unreachable.append(exc)
        else:
            return
    if len(unreachable) == 1:
        raise unreachable[0]
    where = ", ".join(_where(u) for u in urls)
    raise PrerequisiteError(
        f"no RabbitMQ node is reachable ({where}): start them, or fix {setting} / {env}",
        "broker-unreachable",
    ) from unreachable[-1]


async def _check_broker_node(url: str, *, setting: str, env: str) -> None:
    import aiormq
    from aiormq import exceptions as amqp

    where = _where(url)
    quiet = logging.getLogger("aiormq.connection")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # it logs the failure we report in one line
    try:
        conn = await asyncio.wait_for(aiormq.connect(url), TIMEOUT)
    except (amqp.ConnectionNotAllowed, amqp.InvalidFrameError) as exc:
        # the vhost is refused at Connection.Open (NOT_ALLOWED), which older servers and
        # aiormq report as an unexpected Connection.Close frame
        vhost = unquote(urlsplit(url).path.lstrip("/")) or "/"
        raise PrerequisiteError(
            f"RabbitMQ at {where} does not let this user into vhost {vhost!r} (it does not "
            "exist or the user has no permission): run `digipoort setup`, or fix the vhost "
            f"in {setting}",
            "broker-vhost",
        ) from exc
    except (amqp.AMQPConnectionError, OSError, TimeoutError) as exc:
        if isinstance(exc, amqp.ProbableAuthenticationError) or "ACCESS_REFUSED" in str(exc):
            user = unquote(urlsplit(url).username or "guest")
            raise PrerequisiteError(
                f"RabbitMQ at {where} refused the login of user {user!r} (ACCESS_REFUSED: "
                f"wrong user or password): check {setting} or {env}",
                "broker-auth",
            ) from exc
        cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc
        raise PrerequisiteError(
            f"RabbitMQ is not reachable at {where} ({_reason(cause)}): start it, or fix "
            f"{setting} / {env}",
            "broker-unreachable",
        ) from exc
    finally:
        quiet.setLevel(level)
    await conn.close()


async def check_management(url: str | Sequence[str]) -> None:
    """The management API answers, accepts the login and may create vhosts (of a cluster:
    the first node whose API answers)."""
    urls = [url] if isinstance(url, str) else list(url)
    for one in urls[:-1]:
        try:
            await _check_management_node(one)
        except PrerequisiteError as exc:
            if exc.code != "management-unreachable":
                raise
        else:
            return
    await _check_management_node(urls[-1])


async def _check_management_node(url: str) -> None:
    from digipoort.provision import Management

    management = Management(url)
    shown = redact_url(management.base)
    try:
        async with (
            aiohttp.ClientSession(headers=management.headers) as session,
            session.get(
                f"{management.base}/api/whoami", timeout=aiohttp.ClientTimeout(total=TIMEOUT)
            ) as resp,
        ):
            if resp.status == 401:
                raise PrerequisiteError(
                    f"the RabbitMQ management API at {shown} refused the login: check "
                    "broker.management_url or DIGIPOORT_BROKER__MANAGEMENT_URL",
                    "management-auth",
                )
            if resp.status != 200:
                raise PrerequisiteError(
                    f"the RabbitMQ management API at {shown} answered HTTP {resp.status}: "
                    "is broker.management_url right?",
                    "management-unreachable",
                )
            who = await resp.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise PrerequisiteError(
            f"the RabbitMQ management API is not reachable at {shown} ({_reason(exc)}): "
            "enable it (`rabbitmq-plugins enable rabbitmq_management`) or fix "
            "broker.management_url",
            "management-unreachable",
        ) from exc
    tags = who.get("tags", []) if isinstance(who, dict) else []
    tags = tags.split(",") if isinstance(tags, str) else tags
    if "administrator" not in tags:
        raise PrerequisiteError(
            f"the management user of {shown} is not an administrator (tags: "
            f"{','.join(tags) or 'none'}): it cannot create the vhost and users",
            "management-auth",
        )


async def check_reachable(
    url: str | Sequence[str], default_port: int, what: str, setting: str
) -> None:
    """A TCP connection to the host and port of ``url`` opens (of a list: to one of them)."""
    urls = [url] if isinstance(url, str) else list(url)
    for one in urls[:-1]:
        try:
            await _check_reachable(one, default_port, what, setting)
        except PrerequisiteError:
            continue
        return
    await _check_reachable(urls[-1], default_port, what, setting)


async def _check_reachable(url: str, default_port: int, what: str, setting: str) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or default_port
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    except (OSError, TimeoutError) as exc:
        raise PrerequisiteError(
            f"{what} is not reachable at {host}:{port} ({_reason(exc)}): start it, or fix "
            f"{setting}",
            f"{what.split()[0].lower()}-unreachable",
        ) from exc
    writer.close()


def check_port_free(host: str, port: int, setting: str) -> None:
    """Bind ``host:port`` without SO_REUSEPORT (and release it): nobody listens there."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise port_in_use(port, setting) from exc


def port_in_use(port: int | None, setting: str | None) -> PrerequisiteError:
    """Port ``port`` (set by ``setting``, e.g. ``http.port``) is taken."""
    where = f"port {port}" if port else "a listening port"
    if setting:
        env = "DIGIPOORT_" + setting.split("/")[0].replace(".", "__").upper()
        where += f" (setting {setting}; move it in the config or with {env}=…)"
    shows = f" (`ss -tanp 'sport = :{port}'` shows by what)" if port else ""
    return PrerequisiteError(
        f"{where} is already in use: another `digipoort serve` with this config, or another "
        f"program{shows}; stop it, or move the port",
        "port-in-use",
    )


def _listeners() -> list[tuple[str, int]] | None:
    """The listening TCP sockets (address, port) of this host, from /proc/net/tcp{,6};
    None where that is not readable (not Linux)."""
    found: list[tuple[str, int]] = []
    for name, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            with open(name, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            if family == socket.AF_INET:
                return None
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # TCP_LISTEN
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            # /proc shows the address as 32-bit words in host (little-endian) order
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def check_port_range_free(host: str, low: int, high: int, setting: str) -> None:
    """No program listens on a port of ``low..high`` (FTP's passive range) where ``host``
    would bind. A bind probe would be wrong here: outgoing connections of any program hold
    ephemeral ports in such a range for a moment, and FTP skips a busy port anyway; what
    breaks passive mode is a listener that keeps ports of the range (another FTP server,
    a container engine's published ports)."""
    listeners = _listeners()
    if listeners is None or low <= 0:
        return
    wildcard = {"0.0.0.0", "::"}  # noqa: S104  (compared, not bound)
    for address, port in listeners:
        if not low <= port <= high:
            continue
        if host in wildcard or address in wildcard or address in (host, f"::ffff:{host}"):
            raise port_in_use(port, setting)
