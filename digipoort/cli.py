"""The ``digipoort`` command line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click

from digipoort import logging as dlogging
from digipoort.config import Settings, load_settings

T = TypeVar("T")

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="DIGIPOORT_CONFIG",
    default=None,
    help="Config file (default: $DIGIPOORT_CONFIG).",
)


def _settings(config_path: Path | None) -> Settings:
    settings = load_settings(config_path)
    dlogging.configure(settings.log_level)
    return settings


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


@click.group()
@click.version_option(package_name="digipoort")
def main() -> None:
    """Digipoort: the Dutch government's electronic post office, as an open gateway."""


# -- dev --------------------------------------------------------------------------------
@main.group()
def dev() -> None:
    """Development environment."""


@dev.command("init")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path(".dev"),
    show_default=True,
)
@click.option("--force", is_flag=True, help="Overwrite config and keys.")
@click.option(
    "--database-url", default="postgresql://postgres@127.0.0.1:5432/digipoort", show_default=True
)
@click.option(
    "--broker-url", default="amqp://guest:guest@127.0.0.1:5672/digipoort", show_default=True
)
@click.option("--management-url", default="http://guest:guest@127.0.0.1:15672", show_default=True)
@click.option("--http-port", default=9464, show_default=True)
@click.option("--wus-port", default=8443, show_default=True)
def dev_init(
    directory: Path,
    force: bool,
    database_url: str,
    broker_url: str,
    management_url: str,
    http_port: int,
    wus_port: int,
) -> None:
    """Write a ready-to-run environment: config, sample registry and test PKI."""
    from digipoort.devenv import init_dev_env

    written = init_dev_env(
        directory,
        force=force,
        database_url=database_url,
        broker_url=broker_url,
        management_url=management_url,
        http_port=http_port,
        wus_port=wus_port,
    )
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo(f"{directory} is complete; nothing written (use --force to renew)")
    click.echo(f"config: {directory / 'digipoort.toml'}")


# -- setup --------------------------------------------------------------------------------
@main.command("setup")
@config_option
def setup(config_path: Path | None) -> None:
    """Create the database and vhost if missing, migrate, declare the broker topology,
    and load the registry from the config."""
    settings = _settings(config_path)

    async def go() -> None:
        from digipoort import db, provision, registry_store
        from digipoort.broker import Broker

        if await provision.ensure_database(settings.database.url):
            click.echo("database created")
        await provision.Management(settings.broker.management_url).ensure_vhost(
            provision.vhost_of(settings.broker.url)
        )
        applied = await db.migrate_url(settings.database.url)
        click.echo(f"migrations applied: {len(applied)}")
        broker = Broker(settings.broker.url, delivery_limit=settings.broker.delivery_limit)
        await broker.connect()
        await broker.close()
        pool = await db.create_pool(settings.database.url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                changes = await registry_store.load_config(conn, settings.registry, actor="setup")
        finally:
            await pool.close()
        click.echo(f"registry: {len(changes)} changes")

    _run(go)


# -- db -----------------------------------------------------------------------------------
@main.group("db")
def db_group() -> None:
    """Database."""


@db_group.command("migrate")
@config_option
def db_migrate(config_path: Path | None) -> None:
    """Apply pending migrations (ordered SQL files)."""
    settings = _settings(config_path)

    async def go() -> list[str]:
        from digipoort import db, provision

        await provision.ensure_database(settings.database.url)
        return await db.migrate_url(settings.database.url)

    applied = _run(go)
    click.echo("\n".join(applied) if applied else "database is up to date")


# -- registry ----------------------------------------------------------------------------
@main.group()
def registry() -> None:
    """Participants and berichtsoorten."""


@registry.command("load")
@config_option
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit.")
def registry_load(config_path: Path | None, actor: str) -> None:
    """Load the registry from the config into PostgreSQL (idempotent, audited)."""
    settings = _settings(config_path)

    async def go() -> list[str]:
        from digipoort import db, registry_store

        pool = await db.create_pool(settings.database.url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await db.migrate(conn)
                return await registry_store.load_config(conn, settings.registry, actor=actor)
        finally:
            await pool.close()

    changes = _run(go)
    click.echo("\n".join(changes) if changes else "registry unchanged")


# -- serve --------------------------------------------------------------------------------
@main.command()
@config_option
@click.option(
    "--components",
    default=None,
    help="Comma-separated subset (default: all). E.g. validator,router.",
)
def serve(config_path: Path | None, components: str | None) -> None:
    """Run the gateway (all components in one process by default)."""
    settings = _settings(config_path)
    from digipoort.app import Gateway, all_components

    names = (
        tuple(c.strip() for c in components.split(",") if c.strip())
        if components
        else all_components()
    )

    async def go() -> None:
        gateway = Gateway(settings, components=names)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await gateway.start()
        click.echo(f"digipoort serving: {', '.join(names)}", err=True)
        await stop.wait()
        await gateway.stop()

    _run(go)


# -- status -------------------------------------------------------------------------------
@main.command()
@config_option
@click.argument("kenmerk", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path | None, kenmerk: UUID, as_json: bool) -> None:
    """Show an envelope's status history."""
    settings = _settings(config_path)

    async def go() -> list[Any]:
        import asyncpg

        from digipoort.statusstore import history

        conn = await asyncpg.connect(settings.database.url)
        try:
            return await history(conn, kenmerk)
        finally:
            await conn.close()

    entries = _run(go)
    if not entries:
        click.echo(f"unknown kenmerk {kenmerk}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "code": s.code,
                        "omschrijving": s.omschrijving,
                        "tijdstempel": s.tijdstempel.isoformat(),
                        "ontvanger": s.recipient_oin,
                        "foutcode": s.foutcode,
                        "foutbeschrijving": s.foutbeschrijving,
                        "details": s.details,
                    }
                    for s in entries
                ],
                indent=2,
            )
        )
        return
    for s in entries:
        who = f" [{s.recipient_oin}]" if s.recipient_oin else ""
        fout = f" {s.foutcode}: {s.foutbeschrijving}" if s.foutcode else ""
        click.echo(
            f"{s.tijdstempel.isoformat(timespec='milliseconds')}  {s.code}  "
            f"{s.omschrijving}{who}{fout}"
        )
        if s.details:
            for line in s.details.splitlines():
                click.echo(f"      {line}")


def _load_plugin_commands() -> None:
    """Commands of the other packages (routing, adapters) plug in through the
    ``digipoort.commands`` entry point group: each value is a click command or group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="digipoort.commands"):
        if ep.name not in main.commands:
            main.add_command(ep.load(), ep.name)


_load_plugin_commands()

if __name__ == "__main__":
    main()
