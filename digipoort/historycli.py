"""``digipoort history``: the monthly history partitions — list them, create ahead, export
a month, purge a month (docs/operations.md, "Retention and partitions")."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import click

from digipoort import db, partitions, prerequisites
from digipoort.clikit import CliError, config_option, emit, json_option, run_async, settings_from
from digipoort.config import Settings
from digipoort.payloads import FilePayloadStore

T = TypeVar("T")


def _with_conn(
    config_path: Path | None, fn: Callable[[Settings, asyncpg.Connection], Awaitable[T]]
) -> T:
    settings = settings_from(config_path)

    async def go() -> T:
        await prerequisites.check_database(settings.database.url)
        conn = await db.connect(settings.database.url)
        try:
            return await fn(settings, conn)
        except partitions.HistoryError as exc:
            raise CliError(str(exc), "history") from exc
        finally:
            await conn.close()

    return run_async(go)


@click.group("history")
def history() -> None:
    """Monthly history partitions: list, create ahead, export, purge."""


@history.command("list")
@config_option
@json_option
def history_list(config_path: Path | None, as_json: bool) -> None:
    """Every month (and legacy partition) with its envelopes, last activity and the date
    its retention ends."""

    async def go(settings: Settings, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        found = await partitions.partitions(conn)
        suffixes = [m.suffix for m in partitions.months_of(found)]
        suffixes += [s for s in partitions.LEGACY_SUFFIXES if s in found]
        policy = partitions.RetentionPolicy.from_config(settings.history)
        out = []
        for suffix in suffixes:
            st = await partitions.month_state(conn, suffix)
            out.append(
                {
                    "month": st.name,
                    "envelopes": st.envelopes,
                    "last_activity": st.last_activity,
                    "berichtsoorten": list(st.berichtsoorten),
                    "pending_deliveries": st.pending_deliveries,
                    "expires_at": st.expires_at(policy),
                }
            )
        return out

    rows = _with_conn(config_path, go)

    def human() -> None:
        for r in rows:
            click.echo(
                f"{r['month']:10} {r['envelopes']:>10} envelopes"
                f"  last {r['last_activity'] or '-'}  expires {r['expires_at'] or '-'}"
            )

    emit(rows, human)


@history.command("ensure")
@config_option
@json_option
def history_ensure(config_path: Path | None, as_json: bool) -> None:
    """Create the partitions of the current month and history.months_ahead months."""

    async def go(settings: Settings, conn: asyncpg.Connection) -> list[str]:
        made = await partitions.ensure_ahead(
            conn,
            ahead=settings.history.months_ahead,
            lock_timeout_ms=settings.history.lock_timeout_ms,
        )
        return [str(m) for m in made]

    made = _with_conn(config_path, go)
    emit({"created": made}, f"created: {', '.join(made) or 'none (all present)'}")


@history.command("export")
@config_option
@click.argument("month")
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Directory to write MONTH/ into (gzipped CSV per table + manifest.json).",
)
@json_option
def history_export(config_path: Path | None, month: str, directory: Path, as_json: bool) -> None:
    """Export MONTH (YYYY-MM, or legacy / legacy_hi) before it is purged."""

    async def go(_s: Settings, conn: asyncpg.Connection) -> str:
        return str(await partitions.export_month(conn, month, directory))

    out = _with_conn(config_path, go)
    emit({"month": month, "directory": out}, f"exported {month} to {out}")


@history.command("purge")
@config_option
@click.argument("month", required=False)
@click.option("--expired", is_flag=True, help="Purge every month past its retention.")
@click.option(
    "--export-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Export each month here first.",
)
@click.option("--yes", is_flag=True, help="Purge MONTH even if its retention has not ended.")
@json_option
def history_purge(
    config_path: Path | None,
    month: str | None,
    expired: bool,
    export_dir: Path | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Purge MONTH (or --expired months): its rows in every history table and the payload
    files only it used. A month still within retention needs --yes."""
    if (month is None) == (not expired):
        raise CliError("give MONTH or --expired (not both)", "usage")

    async def go(settings: Settings, conn: asyncpg.Connection) -> list[dict[str, Any]]:
        store = FilePayloadStore(settings.resolve(settings.storage.payload_dir))
        # the retention component may be purging right now: one at a time
        await conn.execute("SELECT pg_advisory_lock($1)", partitions.HISTORY_LOCK)
        policy = partitions.RetentionPolicy.from_config(settings.history)
        due = {s.name for s in await partitions.expired(conn, policy)}
        names = sorted(due) if expired else [month or ""]
        results = []
        for name in names:
            partitions.suffix_for(name)  # "not a month" before "not past its retention"
            if name not in due and not yes:
                raise CliError(
                    f"{name} is not past its retention (or has pending deliveries);"
                    " add --yes to purge it anyway",
                    "not-expired",
                )
            export = await partitions.export_month(conn, name, export_dir) if export_dir else None
            r = await partitions.purge_month(
                conn,
                name,
                store,
                actor="cli",
                export_path=export,
                lock_timeout_ms=settings.history.lock_timeout_ms,
            )
            results.append(
                {
                    "month": r.name,
                    "envelopes": r.envelopes,
                    "statuses": r.statuses,
                    "payloads": r.payloads,
                    "seconds": round(r.seconds, 3),
                }
            )
        return results

    results = _with_conn(config_path, go)

    def human() -> None:
        if not results:
            click.echo("nothing to purge")
        for r in results:
            click.echo(
                f"purged {r['month']}: {r['envelopes']} envelopes, {r['statuses']} statuses,"
                f" {r['payloads']} payload files in {r['seconds']} s"
            )

    emit(results, human)
