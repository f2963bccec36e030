"""The reference subscriber: a recipient consuming its own queue into a directory.

For every ``afleverRequest`` in ``digipoort.aflever.<OIN>``:

1. the body is parsed with the hardened parser and the kenmerk checked (a UUID, equal to
   the AMQP ``message_id`` when that is set) — it names a directory, so it is never
   trusted as given;
2. if ``DIR/<kenmerk>/`` exists the message is a duplicate (a redelivery, or the
   documented republish window): acked and skipped;
3. otherwise the document and bijlagen (file names sanitised) and ``afleverRequest.json``
   (the metadata) are written into a fresh temporary directory under ``DIR/.incoming/``,
   each file fsynced, and the directory renamed to ``DIR/<kenmerk>`` (atomic) and
   ``DIR`` fsynced;
4. only then the message is acked.

A message that is not a usable afleverRequest is saved to ``DIR/.quarantine/`` and acked
(logged: never silently dropped). :func:`subscribe` stops when ``stop`` is set or after
``count`` messages; unacked messages return to the queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import structlog
from aio_pika.abc import AbstractIncomingMessage
from lxml import etree

from digipoort import brokerconn
from digipoort.broker import aflever_queue
from digipoort.payloads import fsync_dir
from digipoort.xmlsafe import XmlLimits, XmlRejected, parse
from routing.afleverrequest import NS
from routing.fetcher import FetchFailed, ReferenceFetcher
from routing.grote_berichten import REFERENCE_MIME_TYPE, InvalidReference, parse_reference

log = structlog.get_logger(__name__)

METADATA = "afleverRequest.json"
_Q = "{%s}" % NS  # noqa: UP031
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_RESERVED = {METADATA.lower()}
_LIMITS = XmlLimits(max_bytes=64 * 1024 * 1024, max_depth=32, max_elements=10_000)


class NotAnAfleverRequest(ValueError):
    pass


@dataclass(frozen=True)
class Stored:
    """The outcome for one message."""

    kenmerk: str
    berichtsoort: str
    files: list[str] = field(default_factory=list)
    duplicate: bool = False
    quarantined: bool = False
    failed: bool = False


def safe_filename(name: str | None, fallback: str = "document") -> str:
    """A file name that cannot escape its directory or hide: basename only, a safe
    alphabet, no leading dot, at most 80 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE.sub("_", base).lstrip("._")[:80]
    if not base or base.lower() in _RESERVED:
        base = fallback if not base else f"_{base}"
    return base


def _unique(name: str, taken: set[str]) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    candidate, n = name, 1
    while candidate.lower() in taken:
        candidate = f"{stem}-{n}.{ext}" if ext else f"{stem}-{n}"
        n += 1
    taken.add(candidate.lower())
    return candidate


def _text(el: etree._Element, name: str) -> str | None:
    value = el.findtext(_Q + name)
    return value.strip() if value is not None else None


def _identiteit(el: etree._Element, name: str) -> dict[str, str | None] | None:
    child = el.find(_Q + name)
    if child is None:
        return None
    return {"nummer": _text(child, "nummer"), "type": _text(child, "type")}


@dataclass(frozen=True)
class _Doc:
    role: str
    mime_type: str | None
    bestandsnaam: str | None
    content: bytes
    path: Path | None = None  # a document fetched by reference, already on disk
    size: int = 0
    sha256: str = ""


def parse_aflever_request(body: bytes) -> tuple[dict[str, Any], list[_Doc]]:
    """Pure: the metadata and the documents of an afleverRequest; NotAnAfleverRequest."""
    try:
        root = parse(body, _LIMITS).getroot()
    except XmlRejected as exc:
        raise NotAnAfleverRequest(str(exc)) from None
    if root.tag != _Q + "afleverRequest":
        raise NotAnAfleverRequest(f"root element is {root.tag}")
    kenmerk = _text(root, "kenmerk") or ""
    try:
        kenmerk = str(UUID(kenmerk))
    except ValueError:
        raise NotAnAfleverRequest("kenmerk is not a UUID") from None
    docs: list[_Doc] = []
    elements = [("berichtInhoud", root.find(_Q + "berichtInhoud"))]
    elements += [("bijlage", b) for b in root.findall(f"{_Q}berichtBijlagen/{_Q}bijlage")]
    for role, el in elements:
        if el is None:
            raise NotAnAfleverRequest(f"{role} missing")
        try:
            content = base64.b64decode(_text(el, "inhoud") or "", validate=True)
        except (binascii.Error, ValueError):
            raise NotAnAfleverRequest(f"{role}: inhoud is not base64") from None
        docs.append(_Doc(role, _text(el, "mimeType"), _text(el, "bestandsnaam"), content))
    meta: dict[str, Any] = {
        "kenmerk": kenmerk,
        "berichtsoort": _text(root, "berichtsoort"),
        "berichtkenmerk": _text(root, "berichtkenmerk"),
        "aanleverkenmerk": _text(root, "aanleverkenmerk"),
        "tijdstempelAangeleverd": _text(root, "tijdstempelAangeleverd"),
        "identiteitBelanghebbende": _identiteit(root, "identiteitBelanghebbende"),
        "rolBelanghebbende": _text(root, "rolBelanghebbende"),
        "identiteitAanleveraar": _text(root, "identiteitAanleveraar"),
        "identiteitOntvanger": _identiteit(root, "identiteitOntvanger"),
        "rolOntvanger": _text(root, "rolOntvanger"),
    }
    return meta, docs


def _write_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)




def store(out_dir: Path, body: bytes, message_id: str | None) -> Stored:
    """Write one afleverRequest into ``out_dir`` (blocking; run it in a thread)."""
    meta, docs = parse_checked(body, message_id)
    return store_parsed(out_dir, meta, docs)


def parse_checked(body: bytes, message_id: str | None) -> tuple[dict[str, Any], list[_Doc]]:
    meta, docs = parse_aflever_request(body)
    if message_id is not None and message_id != meta["kenmerk"]:
        raise NotAnAfleverRequest("message_id does not match the kenmerk")
    return meta, docs


def store_parsed(out_dir: Path, meta: dict[str, Any], docs: list[_Doc]) -> Stored:
    """Write a parsed afleverRequest into ``out_dir`` (blocking; run it in a thread)."""
    kenmerk = meta["kenmerk"]
    final = out_dir / kenmerk
    if final.exists():
        return Stored(kenmerk, str(meta["berichtsoort"]), duplicate=True)
    incoming = out_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    tmp = incoming / f"{kenmerk}.{secrets.token_hex(6)}"
    tmp.mkdir()
    try:
        taken: set[str] = {METADATA.lower()}
        documents: list[dict[str, Any]] = []
        names: list[str] = []
        for doc in docs:
            name = _unique(safe_filename(doc.bestandsnaam), taken)
            if doc.path is not None:  # fetched by reference: move the verified file in
                os.rename(doc.path, tmp / name)
                size, digest = doc.size, doc.sha256
            else:
                _write_file(tmp / name, doc.content)
                size, digest = len(doc.content), hashlib.sha256(doc.content).hexdigest()
            names.append(name)
            documents.append(
                {
                    "role": doc.role,
                    "bestandsnaam": doc.bestandsnaam,
                    "file": name,
                    "mimeType": doc.mime_type,
                    "size": size,
                    "sha256": digest,
                    "byReference": doc.path is not None,
                }
            )
        meta["documents"] = documents
        _write_file(tmp / METADATA, json.dumps(meta, indent=2).encode())
        fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if final.exists():  # another subscriber won the race: a duplicate
                shutil.rmtree(tmp, ignore_errors=True)
                return Stored(kenmerk, str(meta["berichtsoort"]), duplicate=True)
            raise
        fsync_dir(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Stored(kenmerk, str(meta["berichtsoort"]), files=names)


def quarantine(out_dir: Path, body: bytes, message_id: str | None) -> Path:
    """Keep an unusable message's bytes (atomically) for a human to look at."""
    directory = out_dir / ".quarantine"
    directory.mkdir(parents=True, exist_ok=True)
    name = safe_filename(message_id, "message") + f".{secrets.token_hex(4)}.bin"
    tmp = directory / f".{name}.tmp"
    _write_file(tmp, body)
    os.replace(tmp, directory / name)
    fsync_dir(directory)
    return directory / name


async def _resolve_references(
    out_dir: Path, kenmerk: str, docs: list[_Doc], fetcher: ReferenceFetcher | None
) -> list[_Doc]:
    resolved: list[_Doc] = []
    for i, doc in enumerate(docs):
        if doc.mime_type != REFERENCE_MIME_TYPE:
            resolved.append(doc)
            continue
        try:
            ref = parse_reference(doc.content)
        except InvalidReference as exc:
            raise NotAnAfleverRequest(f"{doc.role}: {exc}") from None
        if fetcher is None:
            raise FetchFailed("document delivered by reference: pass --cert/--key/--ca")
        part = out_dir / ".downloads" / f"{kenmerk}.{i}.part"
        await fetcher.fetch(ref, part)
        resolved.append(
            _Doc(doc.role, ref.content_type, doc.bestandsnaam, b"", part, ref.size, ref.sha256)
        )
    return resolved


async def handle(
    out_dir: Path, message: AbstractIncomingMessage, fetcher: ReferenceFetcher | None = None
) -> Stored:
    """Store one message (fetching documents delivered by reference), then ack it. A
    fetch that fails leaves the message unacked: it is returned to the queue and the
    partial download is resumed next time."""
    try:
        meta, docs = await asyncio.to_thread(parse_checked, message.body, message.message_id)
        if (out_dir / meta["kenmerk"]).exists():
            result = Stored(meta["kenmerk"], str(meta["berichtsoort"]), duplicate=True)
        else:
            docs = await _resolve_references(out_dir, meta["kenmerk"], docs, fetcher)
            result = await asyncio.to_thread(store_parsed, out_dir, meta, docs)
    except FetchFailed as exc:
        log.error(
            "fetching a document by reference failed; returned to the queue",
            kenmerk=str(message.message_id),
            error=str(exc),
        )
        await asyncio.sleep(fetcher.retry_delay if fetcher else 2.0)  # back off, then retry
        await message.nack(requeue=True)
        return Stored(str(message.message_id or "?"), str(message.type or "?"), failed=True)
    except NotAnAfleverRequest as exc:
        path = await asyncio.to_thread(quarantine, out_dir, message.body, message.message_id)
        log.error("not an afleverRequest; quarantined", error=str(exc), path=str(path))
        result = Stored(str(message.message_id or "?"), str(message.type or "?"), quarantined=True)
    try:
        await message.ack()
    except Exception as exc:  # a stale delivery tag after a reconnect: it comes back
        log.warning(
            "ack failed; the message will be redelivered (and skipped)",
            kenmerk=result.kenmerk,
            error=repr(exc),
        )
    log.info(
        "duplicate skipped" if result.duplicate else "delivered",
        kenmerk=result.kenmerk,
        berichtsoort=result.berichtsoort,
    )
    return result


async def subscribe(
    amqp_url: str | Sequence[str],
    oin: str,
    out_dir: Path,
    *,
    count: int | None = None,
    stop: asyncio.Event | None = None,
    on_stored: Callable[[Stored], None] | None = None,
    prefetch: int = 16,
    fetcher: ReferenceFetcher | None = None,
) -> int:
    """Consume ``digipoort.aflever.<oin>`` into ``out_dir`` until ``stop`` is set or
    ``count`` messages were handled; returns the number handled. ``amqp_url`` may list
    the nodes of a cluster: the subscriber connects to any of them and, when its node
    dies, goes on consuming on another (the queue is declared passively on a robust
    channel, so the consumer is restored after every reconnect)."""
    stop = stop or asyncio.Event()
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    connection = await brokerconn.connect_robust(amqp_url, name=f"subscriber {oin}")
    handled = 0
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        queue = await channel.declare_queue(aflever_queue(oin), passive=True)
        tag = await queue.consume(inbox.put)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while count is None or handled < count:
                getting = asyncio.ensure_future(inbox.get())
                await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not getting.done():
                    getting.cancel()
                    break
                result = await handle(out_dir, getting.result(), fetcher)
                handled += 1
                if on_stored is not None:
                    on_stored(result)
        finally:
            stopping.cancel()
            await queue.cancel(tag)
    finally:
        await connection.close()  # unacked prefetched messages return to the queue
    return handled
