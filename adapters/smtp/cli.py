"""``digipoort participants``: POP3 passwords and return-mail subscriptions (plugged in via
the ``digipoort.commands`` entry point group)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from adapters.smtp import store
from adapters.smtp.passwords import hash_password
from adapters.smtp.returns import DEFAULT_CODES
from digipoort import db, prerequisites
from digipoort.clikit import CliError, config_option, emit, json_option, run_async, settings_from
from digipoort.pki import is_valid_oin


def _oin(value: str) -> str:
    if not is_valid_oin(value):
        raise click.BadParameter(f"not an OIN (20 digits): {value!r}")
    return value


@click.group("participants")
def participants() -> None:
    """Participants' access to the SMTP koppelvlak (POP3 passwords, return mails)."""


@participants.command("password")
@config_option
@click.argument("oin")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@json_option
def password(config_path: Path | None, oin: str, password_stdin: bool, as_json: bool) -> None:
    """Set the POP3 password of OIN (for clients without a certificate). Only a salted
    scrypt hash is stored."""
    oin = _oin(oin)
    if password_stdin:
        secret = sys.stdin.readline().rstrip("\r\n")
    else:
        secret = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(secret) < 12:
        raise click.UsageError("the password must have at least 12 characters")
    hashed = hash_password(secret)
    settings = settings_from(config_path)

    async def go() -> bool:
        await prerequisites.check_database(settings.database.url)
        conn = await db.connect(settings.database.url)
        try:
            known = await conn.fetchval("SELECT 1 FROM participants WHERE oin = $1", oin)
            if not known:
                return False
            await store.set_password_hash(conn, oin, hashed)
            return True
        finally:
            await conn.close()

    if not run_async(go):
        raise CliError(f"unknown participant {oin}", "not-found")
    emit({"oin": oin, "password": "set"}, f"password set for {oin}")


@participants.command("returns")
@config_option
@click.argument("oin")
@click.option(
    "--codes",
    default=None,
    help="Comma-separated status codes to receive as return mails "
    f"(default: {','.join(sorted(DEFAULT_CODES))}); 'default' resets.",
)
@json_option
def returns(config_path: Path | None, oin: str, codes: str | None, as_json: bool) -> None:
    """Show or set which status changes OIN receives as return mails (POP3)."""
    oin = _oin(oin)
    settings = settings_from(config_path)
    wanted: list[str] | None = None
    if codes and codes != "default":
        wanted = sorted({c.strip() for c in codes.split(",") if c.strip()})
        if not all(c.isdigit() and len(c) == 3 for c in wanted):
            raise click.BadParameter("status codes are three digits")

    async def go() -> list[str] | None:
        await prerequisites.check_database(settings.database.url)
        conn = await db.connect(settings.database.url)
        try:
            if codes == "default":
                await conn.execute("DELETE FROM smtp_subscriptions WHERE sender_oin = $1", oin)
            elif wanted is not None:
                await conn.execute(
                    "INSERT INTO smtp_subscriptions (sender_oin, codes) VALUES ($1, $2)"
                    " ON CONFLICT (sender_oin) DO UPDATE SET codes = EXCLUDED.codes,"
                    " updated_at = now()",
                    oin,
                    wanted,
                )
            value = await conn.fetchval(
                "SELECT codes FROM smtp_subscriptions WHERE sender_oin = $1", oin
            )
            return list(value) if value is not None else None
        finally:
            await conn.close()

    current = run_async(go)
    shown = current if current is not None else sorted(DEFAULT_CODES)
    emit(
        {"oin": oin, "codes": shown, "default": current is None},
        f"{oin}: {','.join(shown)}{'' if current is not None else ' (default)'}",
    )
