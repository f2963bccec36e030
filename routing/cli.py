"""Commands of the routing package, plugged into ``digipoort`` through the
``digipoort.commands`` entry point group: ``recipients``, ``subscribe``, ``dead``, ``flows``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import asyncpg
import click

from digipoort import db, prerequisites
from digipoort import logging as dlogging
from digipoort.clikit import (
    REFUSED,
    CliError,
    config_option,
    emit,
    emit_event,
    json_enabled,
    json_option,
    note,
    run_async,
    settings_from,
    stop_on_signals,
    transfer_progress,
)
from digipoort.config import Settings

if TYPE_CHECKING:
    from routing.deadletters import DeadLetter

T = TypeVar("T")

_settings = settings_from
_run = run_async


async def _with_pool(settings: Settings, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    await prerequisites.check_database(settings.database.url)
    pool = await db.create_pool(settings.database.url, min_size=1, max_size=2)
    try:
        return await fn(pool)
    finally:
        await pool.close()


# -- recipients ---------------------------------------------------------------------------
@click.group("recipients")
def recipients() -> None:
    """Recipients' broker accounts (one isolated RabbitMQ user per OIN)."""


@recipients.command("provision")
@config_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Directory for the credential files (default: recipients/ next to the config).",
)
@click.option("--rotate", is_flag=True, help="Generate new passwords for every recipient.")
@json_option
def recipients_provision(
    config_path: Path | None, out_dir: Path | None, rotate: bool, as_json: bool
) -> None:
    """Create (idempotently) a user per recipient OIN that may only consume its own queue
    and publish its own status reports; write its AMQP URL to <out>/<OIN>.txt (0600)."""
    settings = _settings(config_path)
    out = out_dir or settings.config_dir / "recipients"

    async def go() -> list[tuple[str, str, str]]:
        from digipoort.broker import Broker
        from digipoort.provision import Management
        from routing.provision import provision_recipients, recipient_oins

        await prerequisites.check_database(settings.database.url)
        await prerequisites.check_broker(settings.broker.nodes)
        await prerequisites.check_management(settings.broker.management_nodes)
        oins = sorted({*recipient_oins(settings.registry), *await _registry_recipients()})
        broker = Broker.from_settings(settings.broker)
        await broker.connect()  # topology, including every recipient's queue
        try:
            await broker.ensure_aflever_queues(oins)
        finally:
            await broker.close()
        done = await provision_recipients(
            Management(settings.broker.management_nodes),
            settings.broker.nodes,
            oins,
            out,
            rotate=rotate,
        )
        return [(p.oin, p.action, str(p.path)) for p in done]

    async def _registry_recipients() -> list[str]:
        """Recipients in the database too (copies added by flow owners)."""
        from digipoort import registry_store
        from routing.provision import recipient_oins

        conn = await db.connect(settings.database.url)
        try:
            await db.migrate(conn)
            return recipient_oins(await registry_store.snapshot(conn))
        finally:
            await conn.close()

    done = _run(go)
    emit(
        [{"oin": oin, "action": action, "path": path} for oin, action, path in done],
        "\n".join(f"{oin}  {action:8}  {path}" for oin, action, path in done),
    )


# -- subscribe ----------------------------------------------------------------------------
@click.command("subscribe")
@click.option("--oin", required=True, help="The recipient OIN whose queue to consume.")
@click.option(
    "--amqp-url",
    envvar="DIGIPOORT_SUBSCRIBER_AMQP_URL",
    required=True,
    help="The recipient's AMQP URL (from recipients provision); or "
    "$DIGIPOORT_SUBSCRIBER_AMQP_URL. Never logged. A cluster: the URL of each node, "
    "comma-separated.",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory to write delivered messages to (<out>/<kenmerk>/).",
)
@click.option("--count", type=int, default=None, help="Exit after N messages.")
@click.option(
    "--cert",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Client certificate for fetching large documents by reference (Grote Berichten).",
)
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option(
    "--ca",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="CA certificate that signed the gateway's server certificate.",
)
@json_option
def subscribe(
    oin: str,
    amqp_url: str,
    out_dir: Path,
    count: int | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    as_json: bool,
) -> None:
    """Receive as a recipient: write each delivered document to a directory, atomically,
    acking only after the write and skipping duplicate kenmerken. Documents delivered by
    reference are fetched (resumable, checksum verified) with --cert/--key/--ca.

    One line per message on stdout (with --json one JSON object per line)."""
    from aiormq.exceptions import ChannelAccessRefused
    from rich.console import Console

    from routing.subscriber import Stored
    from routing.subscriber import subscribe as run_subscriber

    dlogging.configure("warning")
    tty = sys.stdout.isatty() and not json_enabled()
    console = Console()
    seen = 0

    def show(result: Stored) -> None:
        nonlocal seen
        seen += 1
        what = (
            "quarantined"
            if result.quarantined
            else "retry"
            if result.failed
            else "duplicate"
            if result.duplicate
            else "stored"
        )
        total = f"/{count}" if count else ""
        files = " ".join(result.files)
        line = f"{seen}{total} {what} {result.kenmerk} {result.berichtsoort} {files}"
        if json_enabled():
            emit_event(
                {
                    "n": seen,
                    "result": what,
                    "kenmerk": result.kenmerk,
                    "berichtsoort": result.berichtsoort,
                    "files": list(result.files),
                },
                line,
            )
        elif tty:
            style = {
                "stored": "green",
                "duplicate": "yellow",
                "quarantined": "red",
                "retry": "red",
            }[what]
            console.print(line, style=style, highlight=False)
        else:
            click.echo(line)

    nodes = [u.strip() for u in amqp_url.split(",") if u.strip()]

    async def go() -> int:
        stop = stop_on_signals()
        await prerequisites.check_broker(
            nodes, setting="--amqp-url", env="$DIGIPOORT_SUBSCRIBER_AMQP_URL"
        )
        fetcher = None
        if cert and key and ca:
            from digipoort.pki.tls import client_ssl_context
            from routing.fetcher import ReferenceFetcher

            fetcher = ReferenceFetcher(client_ssl_context(cert, key, ca))
            fetcher.on_progress = download_progress()
        try:
            return await run_subscriber(
                nodes, oin, out_dir, count=count, stop=stop, on_stored=show, fetcher=fetcher
            )
        except ChannelAccessRefused as exc:
            raise CliError(
                f"RabbitMQ refused access to the queue of {oin} (ACCESS_REFUSED): this "
                "--amqp-url belongs to another recipient (use recipients/<OIN>.txt of "
                "`digipoort recipients provision`)",
                "broker-access",
            ) from exc

    handled = _run(go)
    note(f"{handled} messages handled")


def download_progress() -> Callable[[str, int, int], None] | None:
    """A progress bar on stderr for Grote Berichten downloads (on a terminal only):
    called with (name, bytes so far, total)."""
    if not sys.stderr.isatty():
        return None
    from rich.progress import TaskID

    bar = transfer_progress()
    tasks: dict[str, TaskID] = {}

    def advance(name: str, have: int, total: int) -> None:
        if name not in tasks:
            if not tasks:
                bar.start()
            tasks[name] = bar.add_task(name, total=total)
        bar.update(tasks[name], completed=have)
        if have >= total:
            bar.remove_task(tasks.pop(name))
            if not tasks:
                bar.stop()

    return advance


# -- dead ---------------------------------------------------------------------------------
@click.group("dead")
def dead() -> None:
    """The dead-letter queue (digipoort.dead): list, show, retry, discard."""


@dead.command("list")
@config_option
@json_option
def dead_list(config_path: Path | None, as_json: bool) -> None:
    """Every dead letter: kenmerk, stage, reason, count (they stay in the queue)."""
    settings = _settings(config_path)
    letters = _run(lambda: _dead_letters(settings))
    emit(
        [d.as_dict() for d in letters],
        "\n".join(
            f"{d.kenmerk or '-':36}  {d.stage:13}  {d.count:3}  {d.reason[:120]}" for d in letters
        ),
    )
    note(f"{len(letters)} dead letters")


async def _dead_letters(settings: Settings) -> list[DeadLetter]:
    from routing.deadletters import list_dead

    await prerequisites.check_broker(settings.broker.nodes)
    return await list_dead(settings.broker.nodes)


@dead.command("show")
@config_option
@click.argument("kenmerk")
@json_option
def dead_show(config_path: Path | None, kenmerk: str, as_json: bool) -> None:
    """One dead letter, with its body (the first 4000 characters)."""
    settings = _settings(config_path)
    letters = [d for d in _run(lambda: _dead_letters(settings)) if d.kenmerk == kenmerk]
    if not letters:
        raise CliError(f"no dead letter for {kenmerk}", "not-found")
    shown = [{**d.as_dict(), "body": d.body.decode("utf-8", "replace")[:4000]} for d in letters]

    def human() -> None:
        for d in shown:
            body = d.pop("body")
            click.echo(json.dumps(d, indent=2))
            click.echo(body)

    emit(shown, human)


@dead.command("retry")
@config_option
@click.argument("kenmerken", nargs=-1, required=True)
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit.")
@json_option
def dead_retry(
    config_path: Path | None, kenmerken: tuple[str, ...], actor: str, as_json: bool
) -> None:
    """Re-publish to the stage's work queue, then remove from the dead-letter queue."""
    settings = _settings(config_path)
    from routing.deadletters import retry

    done = _run(
        lambda: _with_pool(
            settings, lambda pool: retry(settings.broker.nodes, pool, set(kenmerken), actor=actor)
        )
    )
    _report_dead(
        "retried",
        kenmerken,
        [(d.kenmerk, d.stage, f"retried {d.kenmerk} → {d.stage}") for d in done],
        "not retried (absent or not retryable)",
    )


def _report_dead(
    action: str, asked: tuple[str, ...], done: list[tuple[str | None, str, str]], why: str
) -> None:
    """The outcome of retry/discard (``done``: kenmerk, stage, line); exit 1 if some
    kenmerken ``asked`` for were not handled."""
    missing = sorted(set(asked) - {kenmerk for kenmerk, _, _ in done})
    emit(
        {action: [{"kenmerk": k, "stage": st} for k, st, _ in done], "missing": missing},
        "\n".join(line for _, _, line in done),
    )
    if missing:
        error = CliError(f"{why}: {', '.join(missing)}", "not-found")
        if json_enabled():
            sys.exit(error.status)
        raise error


@dead.command("discard")
@config_option
@click.argument("kenmerken", nargs=-1, required=True)
@click.option("--reason", required=True, help="Why (recorded in the status and the audit).")
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit.")
@json_option
def dead_discard(
    config_path: Path | None, kenmerken: tuple[str, ...], reason: str, actor: str, as_json: bool
) -> None:
    """Record the final status and remove from the dead-letter queue."""
    settings = _settings(config_path)
    from routing.deadletters import discard

    done = _run(
        lambda: _with_pool(
            settings,
            lambda pool: discard(
                settings.broker.nodes, pool, set(kenmerken), actor=actor, reason=reason
            ),
        )
    )
    _report_dead(
        "discarded",
        kenmerken,
        [(d.kenmerk, d.stage, f"discarded {d.kenmerk} ({d.stage})") for d in done],
        "not found",
    )


# -- flows --------------------------------------------------------------------------------
@click.group("flows")
def flows() -> None:
    """Flows (berichtsoorten) as their owner manages them."""


@flows.group("copies")
def copies() -> None:
    """Copy recipients of a flow (meervoudig doorzenden), managed by the flow owner."""


def _change(
    config_path: Path | None, flow: str, oin: str, cert: Path, key: Path, *, add: bool
) -> None:
    settings = _settings(config_path)
    from routing import flows as flowmod

    async def go(pool: asyncpg.Pool) -> list[str]:
        try:
            owner = flowmod.authenticate(settings, cert, key)
        except flowmod.FlowChangeRefused as exc:
            await flowmod.refuse(
                pool,
                flowmod.claimed_actor(cert),
                flow,
                exc,
                {"change": "add" if add else "remove", "oin": oin},
            )
            raise
        async with pool.acquire() as conn:
            return await flowmod.change_copies(
                conn, flow, owner.oin, add=oin if add else None, remove=None if add else oin
            )

    try:
        result = _run(lambda: _with_pool(settings, go))
    except flowmod.FlowChangeRefused as exc:
        raise CliError(f"refused: {exc}", exc.reason, REFUSED) from exc
    emit({"flow": flow, "copies": result}, f"{flow}: copies = {', '.join(result) or '(none)'}")


_cert = click.option(
    "--cert",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The owner's certificate (PEM).",
)
_key = click.option(
    "--key",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    required=True,
    help="The owner's private key (PEM); used only to sign a nonce.",
)


@copies.command("add")
@config_option
@_cert
@_key
@click.argument("flow")
@click.argument("oin")
@json_option
def copies_add(
    config_path: Path | None, cert: Path, key: Path, flow: str, oin: str, as_json: bool
) -> None:
    """Add OIN as a copy recipient of FLOW (as its owner)."""
    _change(config_path, flow, oin, cert, key, add=True)


@copies.command("remove")
@config_option
@_cert
@_key
@click.argument("flow")
@click.argument("oin")
@json_option
def copies_remove(
    config_path: Path | None, cert: Path, key: Path, flow: str, oin: str, as_json: bool
) -> None:
    """Remove OIN from the copy recipients of FLOW (as its owner)."""
    _change(config_path, flow, oin, cert, key, add=False)


@copies.command("list")
@config_option
@click.argument("flow")
@json_option
def copies_list(config_path: Path | None, flow: str, as_json: bool) -> None:
    """The copy recipients of FLOW and whether the owner or the config set them."""
    settings = _settings(config_path)
    from routing.flows import current_copies

    async def go(pool: asyncpg.Pool) -> tuple[list[str], str] | None:
        async with pool.acquire() as conn:
            return await current_copies(conn, flow)

    found = _run(lambda: _with_pool(settings, go))
    if found is None:
        raise CliError(f"unknown flow {flow}", "not-found")
    oins, source = found
    emit({"flow": flow, "copies": oins, "set_by": source}, "\n".join(oins))
    note(f"({len(oins)} copy recipients, set by {source})")
