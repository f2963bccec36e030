"""The ``digipoort`` command line."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID

import click

from digipoort.clikit import config_option, run_async, settings_from
from digipoort.config import load_settings

T = TypeVar("T")

_settings = settings_from
_run = run_async


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
@click.option("--smtp-port", default=8587, show_default=True)
@click.option("--pop3-port", default=8110, show_default=True)
@click.option("--ftp-port", default=8021, show_default=True)
def dev_init(
    directory: Path,
    force: bool,
    database_url: str,
    broker_url: str,
    management_url: str,
    http_port: int,
    wus_port: int,
    smtp_port: int,
    pop3_port: int,
    ftp_port: int,
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
        smtp_port=smtp_port,
        pop3_port=pop3_port,
        ftp_port=ftp_port,
    )
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo(f"{directory} is complete; nothing written (use --force to renew)")
    click.echo(f"config: {directory / 'digipoort.toml'}")


from digipoort.pki.devcli import add_dev_commands  # noqa: E402 - dev pki-server, dev revoke

add_dev_commands(dev)


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
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes sharing the listening ports (SO_REUSEPORT) and the queues.",
)
def serve(config_path: Path | None, components: str | None, processes: int) -> None:
    """Run the gateway (all components in one process by default)."""
    settings = _settings(config_path)
    from digipoort.app import Gateway, all_components

    if processes > 1:
        from digipoort.supervisor import supervise

        args = ["serve"]
        if config_path is not None:
            args += ["--config", str(config_path)]
        if components:
            args += ["--components", components]
        sys.exit(supervise(args, processes))

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


# -- test clients (submit, status --via) ---------------------------------------------------
def _submitter_names() -> list[str]:
    from importlib.metadata import entry_points

    return sorted({ep.name for ep in entry_points(group="digipoort.submitters")} | {"wus"})


SUBMITTERS = _submitter_names()


def client_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--cert/--key/--ca/--url of a koppelvlak test client."""
    for option in reversed(
        [
            click.option(
                "--cert",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                help="Participant certificate (PEM, leaf + chain).",
            ),
            click.option(
                "--key",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                help="Participant private key (PEM).",
            ),
            click.option(
                "--ca",
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                help="Trust root of the gateway (default: ca.crt next to --cert).",
            ),
            click.option(
                "--url",
                default=None,
                help="Gateway base URL (default: wus.public_url of the config).",
            ),
        ]
    ):
        fn = option(fn)
    return fn


def _submitter(via: str) -> Any:
    """The test client of a koppelvlak, from the ``digipoort.submitters`` entry points
    (the core never imports adapters directly)."""
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="digipoort.submitters")}
    if via not in found:
        raise click.UsageError(f"no test client for {via!r} (known: {', '.join(sorted(found))})")
    return found[via].load()


def _need_identity(cert: Path | None, key: Path | None) -> tuple[Path, Path]:
    if cert is None or key is None:
        raise click.UsageError("--cert and --key are required")
    return cert, key


def _url(config_path: Path | None, url: str | None, via: str = "wus") -> str:
    if url:
        return url
    settings = load_settings(config_path)
    if via == "ftp":
        return f"ftps://{settings.ftp.public_host}:{settings.ftp.port}"
    if via == "smtp":
        return f"smtp://{settings.smtp.host}:{settings.smtp.port}/{settings.smtp.domain}"
    return settings.wus.public_url


def _client_call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as exc:
        code = getattr(exc, "foutcode", None)
        click.echo(f"{code + ': ' if code else ''}{exc}", err=True)
        sys.exit(2)


@main.command()
@config_option
@click.option("--via", type=click.Choice(SUBMITTERS), default="wus", show_default=True)
@client_options
@click.option("--berichtsoort", required=True)
@click.option("--ontvanger", default=None, help="identiteitOntvanger (OIN).")
@click.option("--aanleverkenmerk", default=None)
@click.option("--mime-type", default="text/xml", show_default=True)
@click.option(
    "--bijlage",
    "bijlagen",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
def submit(
    config_path: Path | None,
    via: str,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    url: str | None,
    berichtsoort: str,
    ontvanger: str | None,
    aanleverkenmerk: str | None,
    mime_type: str,
    bijlagen: tuple[Path, ...],
    as_json: bool,
    file: Path,
) -> None:
    """Submit FILE as a real client would (signed, mutual TLS); print the kenmerk."""
    submitter = _submitter(via)
    cert, key = _need_identity(cert, key)
    result = _client_call(
        lambda: submitter.submit(
            url=_url(config_path, url, via),
            cert=cert,
            key=key,
            ca=ca or cert.parent / "ca.crt",
            berichtsoort=berichtsoort,
            file=file,
            ontvanger=ontvanger,
            bijlagen=bijlagen,
            aanleverkenmerk=aanleverkenmerk,
            mime_type=mime_type,
        )
    )
    click.echo(json.dumps(result, indent=2) if as_json else result["kenmerk"])


# -- status -------------------------------------------------------------------------------
@main.command()
@config_option
@click.argument("kenmerk", type=click.UUID)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--via",
    type=click.Choice(["db", *SUBMITTERS]),
    default="db",
    show_default=True,
    help="db: read the history directly; wus: ask the statusinformatieservice as a client.",
)
@client_options
def status(
    config_path: Path | None,
    kenmerk: UUID,
    as_json: bool,
    via: str,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    url: str | None,
) -> None:
    """Show an envelope's status history."""
    if via != "db":
        submitter = _submitter(via)
        cert, key = _need_identity(cert, key)
        entries_wus = _client_call(
            lambda: submitter.status(
                url=_url(config_path, url, via),
                cert=cert,
                key=key,
                ca=ca or cert.parent / "ca.crt",
                kenmerk=str(kenmerk),
            )
        )
        if as_json:
            click.echo(json.dumps(entries_wus, indent=2))
            return
        for e in entries_wus:
            fout = f" {e['foutcode']}: {e['foutbeschrijving']}" if e.get("foutcode") else ""
            click.echo(f"{e['tijdstempel']}  {e['statuscode']}  {e['omschrijving']}{fout}")
        return
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
