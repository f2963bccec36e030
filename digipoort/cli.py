"""The ``digipoort`` command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from uuid import UUID

import click

from digipoort import prerequisites
from digipoort.clikit import (
    DEBUG_KEY,
    CliError,
    DigipoortGroup,
    config_option,
    configure_logging,
    emit,
    json_option,
    run_async,
    settings_from,
    step,
    stop_on_signals,
)
from digipoort.config import Settings

_settings = settings_from
_run = run_async


@click.group(cls=DigipoortGroup)
@click.version_option(package_name="digipoort")
@click.option(
    "--debug",
    is_flag=True,
    help="Tracebacks and debug logs (also DIGIPOORT_LOG_LEVEL=debug).",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Digipoort: the Dutch government's electronic post office, as an open gateway.

    Every error is one line on stderr (with --json: {"error": …, "code": …} on stdout)
    and a non-zero exit; --debug shows the traceback."""
    ctx.meta[DEBUG_KEY] = debug
    configure_logging()


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
@json_option
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
    as_json: bool,
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
    lines = [f"wrote {path}" for path in written] or [
        f"{directory} is complete; nothing written (use --force to renew)"
    ]
    config = directory / "digipoort.toml"
    emit(
        {"written": [str(p) for p in written], "config": str(config)},
        "\n".join([*lines, f"config: {config}"]),
    )


from digipoort.pki.devcli import add_dev_commands  # noqa: E402 - dev pki-server, dev revoke

add_dev_commands(dev)


# -- setup --------------------------------------------------------------------------------
@main.command("setup")
@config_option
@json_option
def setup(config_path: Path | None, as_json: bool) -> None:
    """Create the database and vhost if missing, migrate, declare the broker topology,
    and load the registry from the config. Every prerequisite (PostgreSQL, the RabbitMQ
    management API and AMQP port) is checked first, so a failure changes nothing."""
    settings = _settings(config_path)

    async def go() -> dict[str, Any]:
        from digipoort import db, provision, registry_store
        from digipoort.broker import Broker

        step("checking PostgreSQL, RabbitMQ and its management API")
        await check_setup_prerequisites(settings)
        step("database")
        created = await provision.ensure_database(settings.database.url)
        vhost = provision.vhost_of(settings.broker.url)
        step(f"RabbitMQ vhost {vhost}")
        # the permissions go to the gateway's own AMQP user (not always guest)
        user = unquote(urlsplit(settings.broker.url).username or "guest")
        await provision.Management(settings.broker.management_nodes).ensure_vhost(vhost, user)
        step("migrations")
        applied = await db.migrate_url(settings.database.url)
        step("broker topology")
        await prerequisites.check_broker(settings.broker.nodes)
        broker = Broker.from_settings(settings.broker)
        await broker.connect()
        await broker.close()
        step("registry")
        pool = await db.create_pool(settings.database.url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                changes = await registry_store.load_config(conn, settings.registry, actor="setup")
        finally:
            await pool.close()
        return {
            "database_created": created,
            "vhost": vhost,
            "migrations_applied": applied,
            "registry_changes": changes,
        }

    result = _run(go)
    emit(
        result,
        "\n".join(
            [
                *(["database created"] if result["database_created"] else []),
                f"migrations applied: {len(result['migrations_applied'])}",
                f"registry: {len(result['registry_changes'])} changes",
            ]
        ),
    )


async def check_setup_prerequisites(settings: Settings) -> None:
    """Everything ``setup`` needs, checked before it changes anything."""
    from digipoort.provision import admin_url

    await prerequisites.check_database(admin_url(settings.database.url))
    await prerequisites.check_management(settings.broker.management_nodes)
    await prerequisites.check_reachable(
        settings.broker.nodes, 5672, "RabbitMQ (AMQP)", "broker.url / DIGIPOORT_BROKER__URL"
    )


# -- db -----------------------------------------------------------------------------------
@main.group("db")
def db_group() -> None:
    """Database."""


@db_group.command("migrate")
@config_option
@json_option
def db_migrate(config_path: Path | None, as_json: bool) -> None:
    """Apply pending migrations (ordered SQL files)."""
    settings = _settings(config_path)

    async def go() -> list[str]:
        from digipoort import db, provision

        await prerequisites.check_database(provision.admin_url(settings.database.url))
        await provision.ensure_database(settings.database.url)
        return await db.migrate_url(settings.database.url)

    applied = _run(go)
    emit({"applied": applied}, "\n".join(applied) if applied else "database is up to date")


# -- registry ----------------------------------------------------------------------------
@main.group()
def registry() -> None:
    """Participants and berichtsoorten."""


@registry.command("load")
@config_option
@click.option("--actor", default="cli", show_default=True, help="Recorded in the audit.")
@json_option
def registry_load(config_path: Path | None, actor: str, as_json: bool) -> None:
    """Load the registry from the config into PostgreSQL (idempotent, audited)."""
    settings = _settings(config_path)

    async def go() -> list[str]:
        from digipoort import db, registry_store

        await prerequisites.check_database(settings.database.url)
        pool = await db.create_pool(settings.database.url, min_size=1, max_size=2)
        try:
            async with pool.acquire() as conn:
                await db.migrate(conn)
                return await registry_store.load_config(conn, settings.registry, actor=actor)
        finally:
            await pool.close()

    changes = _run(go)
    emit({"changes": changes}, "\n".join(changes) if changes else "registry unchanged")


# -- serve --------------------------------------------------------------------------------
@main.command()
@config_option
@click.option(
    "--components",
    default=None,
    help="Comma-separated subset (default: all). E.g. intake,wus,stages.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes sharing the listening ports (SO_REUSEPORT) and the queues.",
)
def serve(config_path: Path | None, components: str | None, processes: int) -> None:
    """Run the gateway (all components in one process by default).

    PostgreSQL, RabbitMQ and the listening ports are checked first. The ports are bound
    exclusively: a second `serve` on the same config refuses to start (only the worker
    processes of one `serve --processes N` share them)."""
    settings = _settings(config_path, serving=True)
    from digipoort.app import Gateway, all_components
    from digipoort.supervisor import CHILD_ENV

    names = (
        tuple(c.strip() for c in components.split(",") if c.strip())
        if components
        else all_components()
    )
    unknown = sorted(set(names) - set(all_components()))
    if unknown:
        raise CliError(
            f"unknown component {', '.join(unknown)} (known: {', '.join(all_components())})",
            "usage",
            2,
        )
    if processes > 1:
        from digipoort.supervisor import check_plan

        check_plan(names, processes)  # FTP runs in one of them
    if os.environ.get(CHILD_ENV) is None:  # the supervisor checked for its children
        _run(lambda: _check_serve_prerequisites(settings, names))

    if processes > 1:
        from digipoort.supervisor import supervise

        args = ["serve"]
        if config_path is not None:
            args += ["--config", str(config_path)]
        sys.exit(supervise(args, processes, names))

    async def go() -> None:
        gateway = Gateway(settings, components=names)
        stop = stop_on_signals()
        try:
            await gateway.start()
        except BaseException:
            await gateway.stop()
            raise
        click.echo(f"digipoort serving: {', '.join(names)}", err=True)
        await stop.wait()
        await gateway.stop()

    from digipoort.app import event_loop_for, run_on

    run_on(event_loop_for(settings.event_loop, names), go)


#: The listening port of each component that has one (besides http.port).
COMPONENT_PORTS = {"wus": "wus", "smtp": "smtp", "pop3": "pop3", "ftp": "ftp"}


async def _check_serve_prerequisites(settings: Settings, names: tuple[str, ...]) -> None:
    """The database exists and accepts us, the broker too, and our ports are free."""
    ports = [("http", settings.http.host, settings.http.port)]
    for name in names:
        section = COMPONENT_PORTS.get(name)
        if section is not None:
            config = getattr(settings, section)
            ports.append((section, config.host, config.port))
    for section, host, port in ports:
        prerequisites.check_port_free(host, port, f"{section}.port")
    if "ftp" in names:  # the passive data ports too: FTP binds them per transfer
        ftp = settings.ftp
        prerequisites.check_port_range_free(
            ftp.host, ftp.passive_port_min, ftp.passive_port_max,
            "ftp.passive_port_min/passive_port_max",
        )  # fmt: skip
    await prerequisites.check_database(settings.database.url)
    await prerequisites.check_broker(settings.broker.nodes)


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
    settings = _settings(config_path)
    if via == "ftp":
        return f"ftps://{settings.ftp.public_host}:{settings.ftp.port}"
    if via == "smtp":
        return f"smtp://{settings.smtp.host}:{settings.smtp.port}/{settings.smtp.domain}"
    return settings.wus.public_url


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
@json_option
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
    """Submit FILE as a real client would (signed, mutual TLS); print the kenmerk.

    A refused certificate, a fault (e.g. ALS140) or an unreachable gateway is one line
    on stderr and exit 1."""
    submitter = _submitter(via)
    cert, key = _need_identity(cert, key)
    result = submitter.submit(
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
    emit(result, str(result["kenmerk"]))


# -- status -------------------------------------------------------------------------------
STATUS_SOURCES = ["db", "wus", "ftp"]


def status_entry(
    *,
    kenmerk: str,
    code: str | None,
    omschrijving: str | None,
    tijdstempel: str | None,
    ontvanger: str | None,
    foutcode: str | None,
    foutbeschrijving: str | None,
    details: str | None,
) -> dict[str, Any]:
    """One status in the one schema of ``status --json``, whatever the source."""
    return {
        "kenmerk": kenmerk,
        "code": code,
        "omschrijving": omschrijving,
        "tijdstempel": tijdstempel,
        "ontvanger": ontvanger,
        "foutcode": foutcode,
        "foutbeschrijving": foutbeschrijving,
        "details": details,
    }


def from_koppelvlak(entry: dict[str, Any]) -> dict[str, Any]:
    """A StatusResultaat (WUS answer or FTP status file) in the ``status --json`` schema:
    the recipient, which the koppelvlak carries as a first ``ontvanger: <OIN>`` line of
    ``statusdetails``, becomes its own field."""
    details: str | None = entry.get("details")
    ontvanger = entry.get("ontvanger")
    if details and details.startswith("ontvanger: "):
        first, _, rest = details.partition("\n")
        ontvanger = first.removeprefix("ontvanger: ").strip() or None
        details = rest or None
    return status_entry(
        kenmerk=str(entry.get("kenmerk")),
        code=entry.get("statuscode", entry.get("code")),
        omschrijving=entry.get("omschrijving"),
        tijdstempel=entry.get("tijdstempel"),
        ontvanger=ontvanger,
        foutcode=entry.get("foutcode"),
        foutbeschrijving=entry.get("foutbeschrijving"),
        details=details,
    )


def show_status(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        who = f" [{e['ontvanger']}]" if e["ontvanger"] else ""
        fout = f" {e['foutcode']}: {e['foutbeschrijving']}" if e["foutcode"] else ""
        click.echo(f"{e['tijdstempel']}  {e['code']}  {e['omschrijving']}{who}{fout}")
        for line in (e["details"] or "").splitlines():
            click.echo(f"      {line}")


@main.command()
@config_option
@click.argument("kenmerk", type=click.UUID)
@json_option
@click.option(
    "--via",
    type=click.Choice(STATUS_SOURCES),
    default="db",
    show_default=True,
    help="db: read the history directly; wus: ask the statusinformatieservice as a "
    "client; ftp: read the status file in /out/ as a client. (SMTP senders get their "
    "statuses as return mails over POP3.)",
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
    """Show an envelope's status history (the same fields whatever --via)."""
    if via != "db":
        submitter = _submitter(via)
        cert, key = _need_identity(cert, key)
        found = submitter.status(
            url=_url(config_path, url, via),
            cert=cert,
            key=key,
            ca=ca or cert.parent / "ca.crt",
            kenmerk=str(kenmerk),
        )
        entries = [from_koppelvlak(e) for e in found]
    else:
        entries = _status_from_db(config_path, kenmerk)
    if not entries:
        raise CliError(f"unknown kenmerk {kenmerk}", "unknown-kenmerk")
    emit(entries, lambda: show_status(entries))


def _status_from_db(config_path: Path | None, kenmerk: UUID) -> list[dict[str, Any]]:
    settings = _settings(config_path)

    async def go() -> list[Any]:
        from digipoort import db
        from digipoort.statusstore import history

        await prerequisites.check_database(settings.database.url)
        conn = await db.connect(settings.database.url)
        try:
            return await history(conn, kenmerk)
        finally:
            await conn.close()

    return [
        status_entry(
            kenmerk=str(kenmerk),
            code=s.code,
            omschrijving=s.omschrijving,
            tijdstempel=s.tijdstempel.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            ontvanger=s.recipient_oin,
            foutcode=s.foutcode,
            foutbeschrijving=s.foutbeschrijving,
            details=s.details,
        )
        for s in _run(go)
    ]


def _load_plugin_commands() -> None:
    """Commands of the other packages (routing, adapters) plug in through the
    ``digipoort.commands`` entry point group: each value is a click command or group."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="digipoort.commands"):
        if ep.name not in main.commands:
            main.add_command(ep.load(), ep.name)


main.add_command(__import__("digipoort.archive.cli").archive.cli.archive)  # archive verify|show
main.add_command(__import__("digipoort.historycli", fromlist=["history"]).history)
_load_plugin_commands()

if __name__ == "__main__":
    main()
