"""PostgreSQL access of the SMTP koppelvlak: submissions, mailboxes, passwords."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias
from uuid import UUID

import asyncpg

from digipoort.pki import VerifiedIdentity

__all__ = [
    "MailboxEntry",
    "delete_messages",
    "fetch_message",
    "get_password_hash",
    "list_mailbox",
    "record_submission",
    "set_password_hash",
]

Db: TypeAlias = asyncpg.Pool | asyncpg.Connection


@dataclass(frozen=True)
class MailboxEntry:
    id: int
    uid: str
    size: int


async def record_submission(
    db: Db,
    kenmerk: UUID,
    *,
    message_id: str | None,
    mail_from: str,
    signer: VerifiedIdentity | None,
) -> None:
    await db.execute(
        "INSERT INTO smtp_submissions (kenmerk, message_id, mail_from, smime_signer_oin,"
        " smime_subject, smime_fingerprint) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT DO NOTHING",
        kenmerk,
        message_id,
        mail_from,
        signer.oin if signer else None,
        signer.subject if signer else None,
        signer.fingerprint_sha256 if signer else None,
    )


async def list_mailbox(db: Db, owner_oin: str) -> list[MailboxEntry]:
    rows = await db.fetch(
        "SELECT id, uid, octet_length(message) AS size FROM pop3_mailbox"
        " WHERE owner_oin = $1 ORDER BY id",
        owner_oin,
    )
    return [MailboxEntry(r["id"], r["uid"], r["size"]) for r in rows]


async def fetch_message(db: Db, owner_oin: str, entry_id: int) -> bytes | None:
    value = await db.fetchval(
        "SELECT message FROM pop3_mailbox WHERE owner_oin = $1 AND id = $2", owner_oin, entry_id
    )
    return bytes(value) if value is not None else None


async def delete_messages(db: Db, owner_oin: str, ids: Sequence[int]) -> int:
    result = await db.execute(
        "DELETE FROM pop3_mailbox WHERE owner_oin = $1 AND id = ANY($2::bigint[])",
        owner_oin,
        list(ids),
    )
    return int(result.split()[-1])


async def get_password_hash(db: Db, oin: str) -> str | None:
    value = await db.fetchval("SELECT hash FROM participant_passwords WHERE oin = $1", oin)
    return str(value) if value is not None else None


async def set_password_hash(db: Db, oin: str, hashed: str) -> None:
    await db.execute(
        "INSERT INTO participant_passwords (oin, hash) VALUES ($1, $2)"
        " ON CONFLICT (oin) DO UPDATE SET hash = EXCLUDED.hash, updated_at = now()",
        oin,
        hashed,
    )
