"""Recipients on the broker: one RabbitMQ user per recipient OIN, isolated by permissions.

Each recipient (or copy recipient) of a berichtsoort gets a user ``<OIN>@<vhost>`` in the
gateway's vhost with

* configure: nothing (``^$``) — it cannot declare, delete or purge-by-redeclare anything;
* read: its own queue ``digipoort.aflever.<OIN>`` only — consume/get/purge its own queue,
  nothing else (binding needs read on the exchange: refused);
* write: the status exchange ``digipoort.status`` only — its zetStatus reports.

A generated password per recipient is written once to ``<out>/<OIN>.txt`` (mode 0600,
temp file + fsync + rename) as the AMQP URL to connect with; it is never logged. Running
again keeps the password from that file unless ``rotate``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import aiohttp
import structlog

from digipoort.broker import STATUS_EXCHANGE, aflever_queue
from digipoort.provision import Management, vhost_of
from digipoort.registry import Registry, RegistryConfig

log = structlog.get_logger(__name__)


def recipient_oins(registry: Registry | RegistryConfig) -> list[str]:
    """Every OIN that is a recipient or copy recipient of some berichtsoort."""
    soorten = (
        registry.berichtsoorten.values()
        if isinstance(registry, Registry)
        else registry.berichtsoorten
    )
    oins: set[str] = set()
    for b in soorten:
        oins.update(b.recipients)
        oins.update(b.copies)
    return sorted(oins)


def recipient_user(oin: str, vhost: str) -> str:
    """The RabbitMQ user name of a recipient (unique per vhost: users are broker-wide)."""
    return f"{oin}@{vhost}"


def oin_of_user(user: str, vhost: str) -> str | None:
    """The recipient OIN of a user name made by :func:`recipient_user`, else None."""
    oin, sep, rest = user.partition("@")
    if not sep or rest != vhost or not re.fullmatch(r"[0-9]{20}", oin):
        return None
    return oin


def permissions(oin: str) -> dict[str, str]:
    return {
        "configure": "^$",
        "read": f"^{re.escape(aflever_queue(oin))}$",
        "write": f"^{re.escape(STATUS_EXCHANGE)}$",
    }


def recipient_url(gateway_amqp_url: str, user: str, password: str) -> str:
    """The gateway's broker URL with the recipient's credentials (same host, vhost, TLS)."""
    parts = urlsplit(gateway_amqp_url)
    host = parts.hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


@dataclass(frozen=True)
class Provisioned:
    oin: str
    user: str
    path: Path
    action: str  # created | kept | rotated


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600: temp file, fsync, rename, fsync dir."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _password_from(path: Path) -> str | None:
    try:
        url = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    password = urlsplit(url).password
    return unquote(password) if password else None


async def _user_exists(mgmt: Management, user: str) -> bool:
    async with (
        aiohttp.ClientSession(headers=mgmt.headers) as session,
        session.get(
            f"{mgmt.base}/api/users/{quote(user, safe='')}",
            timeout=aiohttp.ClientTimeout(total=30),
        ) as resp,
    ):
        if resp.status == 404:
            return False
        if resp.status >= 400:
            raise RuntimeError(f"management API GET user: {resp.status}")
        return True


async def provision_recipients(
    mgmt: Management,
    amqp_url: str | Sequence[str],
    oins: Iterable[str],
    out_dir: Path,
    *,
    rotate: bool = False,
) -> list[Provisioned]:
    """Create or update the user and permissions of each recipient (idempotent). Given
    the nodes of a cluster, each recipient's file lists a URL per node, comma-separated
    (what ``digipoort subscribe --amqp-url`` takes)."""
    nodes = [amqp_url] if isinstance(amqp_url, str) else list(amqp_url)
    vhost = vhost_of(nodes[0])
    results: list[Provisioned] = []
    for oin in oins:
        user = recipient_user(oin, vhost)
        path = out_dir / f"{oin}.txt"
        existing = None if rotate else _password_from(path)
        exists = await _user_exists(mgmt, user)
        if existing is not None:
            password, action = existing, "kept"
        else:
            password = secrets.token_urlsafe(32)
            action = "rotated" if (exists or path.exists()) else "created"
        await mgmt.request(
            "PUT", f"/users/{quote(user, safe='')}", {"password": password, "tags": ""}
        )
        await mgmt.request(
            "PUT",
            f"/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
            permissions(oin),
        )
        if action != "kept":
            urls = ",".join(recipient_url(u, user, password) for u in nodes)
            write_secret(path, urls + "\n")
        log.info("recipient provisioned", recipient=oin, user=user, action=action)
        results.append(Provisioned(oin, user, path, action))
    return results


async def delete_recipient_users(mgmt: Management, amqp_url: str, oins: Iterable[str]) -> None:
    vhost = vhost_of(amqp_url)
    for oin in oins:
        await mgmt.request("DELETE", f"/users/{quote(recipient_user(oin, vhost), safe='')}")
