"""``digipoort archive``: verify, show, close, purge (docs/archive.md)."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any

import click

from digipoort.clikit import CliError, config_option, emit, json_option, settings_from

__all__ = ["archive"]

_KENMERK = re.compile(r"^[0-9a-fA-F-]{32,36}$")


def _day(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat()
    except ValueError:
        raise click.BadParameter("a day is YYYY-MM-DD (UTC)") from None


day_option = click.option("--day", callback=_day, default=None, help="One day, YYYY-MM-DD (UTC).")


@click.group()
def archive() -> None:
    """The non-repudiation archive: what was received and answered, signed per day."""


@archive.command()
@config_option
@day_option
@json_option
def verify(config_path: Path | None, day: str | None, as_json: bool) -> None:
    """Prove the archive's integrity (every day, or --day): signatures, manifests, hash
    chains, every payload byte. Exit 1 when anything does not verify."""
    from digipoort.archive.verify import verify as run

    settings = settings_from(config_path)
    reports = run(settings, day)
    ok = all(r.ok for r in reports)

    def human() -> None:
        if not reports:
            click.echo("archive is empty")
        for r in reports:
            mark = "OK " if r.ok else "BAD"
            signed = f", signed {r.signed_at}" if r.signed_at else ""
            stamp = ", time-stamped" if r.timestamped else ""
            click.echo(f"{mark} {r.day} {r.state}: {r.segments} segments, {r.entries} entries"
                       f"{signed}{stamp}")  # fmt: skip
            for p in r.problems:
                click.echo(f"    problem: {p}")
            for n in r.notes:
                click.echo(f"    note: {n}")

    emit({"ok": ok, "days": [r.as_dict() for r in reports]}, human)
    if not ok:
        click.get_current_context().exit(1)


@archive.command()
@config_option
@click.argument("kenmerk")
@day_option
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Write every payload's exact bytes to this directory.")  # fmt: skip
@json_option
def show(
    config_path: Path | None, kenmerk: str, day: str | None, out: Path | None, as_json: bool
) -> None:
    """Print what was received and answered for KENMERK: the request as received, the
    answer as sent, the push receipts, TLS facts and certificates."""
    from digipoort.archive.show import find

    if not _KENMERK.match(kenmerk):
        raise CliError(f"{kenmerk!r} is not a kenmerk", "usage")
    settings = settings_from(config_path)
    found, problems = find(settings, kenmerk.lower(), day=day)
    if not found:
        raise CliError(f"kenmerk {kenmerk} is not in the archive", "not-found")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for f in found:
            name = f"{f.day}_{f.segment.stem}_{f.entry.header.get('seq')}_{f.entry.kind}.bin"
            (out / name).write_bytes(f.payload())
    entries = [f.as_dict() for f in found]

    def human() -> None:
        for e in entries:
            click.echo(f"== {e['at']}  {e['kind']}  ({e['ref']})")
            for key in ("koppelvlak", "kenmerk", "oin", "exchange"):
                if e.get(key):
                    click.echo(f"   {key}: {e[key]}")
            click.echo(f"   bytes: {e['bytes']}  sha256: {e['sha256']}")
            for key, value in sorted((e.get("facts") or {}).items()):
                click.echo(f"   {key}: {_short(value)}")
            if e["kind"] == "certificate":
                details = e.get("certificate")
                for key, value in details.items() if isinstance(details, dict) else []:
                    click.echo(f"   {key}: {value}")
                continue
            if "payload" in e:
                click.echo("   ---")
                for line in str(e["payload"]).splitlines()[:200]:
                    click.echo(f"   {line}")
            elif e["bytes"]:
                click.echo("   (payload not shown: binary or large; use --out DIR)")
        for p in problems:
            click.echo(f"problem: {p}", err=True)

    emit({"kenmerk": kenmerk.lower(), "entries": entries, "problems": problems}, human)


def _short(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


@archive.command()
@config_option
@day_option
@json_option
def close(config_path: Path | None, day: str | None, as_json: bool) -> None:
    """Close (sign and seal) the days that are over, or --day D (a past day)."""
    from digipoort.archive.manifest import CloseFailed, close_day, due_days
    from digipoort.archive.writer import day_name, utc_now

    settings = settings_from(config_path)
    root = settings.resolve(settings.archive.dir)
    if day is not None and day >= day_name(utc_now()):
        raise CliError(f"{day} is not over yet (UTC): it cannot be closed", "usage")
    days = [day] if day else due_days(root, utc_now(), settings.archive.close_grace_seconds)
    closed = []
    for d in days:
        try:
            if close_day(settings, d):
                closed.append(d)
        except CloseFailed as exc:
            raise CliError(f"cannot close {d}: {exc} (see `digipoort archive verify`)",
                           "archive-damaged") from None  # fmt: skip
    emit({"closed": closed}, "\n".join(f"closed {d}" for d in closed) or "nothing to close")


@archive.command()
@config_option
@json_option
def purge(config_path: Path | None, as_json: bool) -> None:
    """Remove closed days older than archive.retention_days."""
    from digipoort.archive.manifest import purge as run

    settings = settings_from(config_path)
    removed = run(settings)
    emit({"purged": removed}, "\n".join(f"purged {d}" for d in removed) or "nothing to purge")
