"""Meervoudig doorzenden by the flow owner: who gets copies of a berichtsoort.

Only the berichtstroomeigenaar (the berichtsoort's ``owner``) may change the copy
recipients of its flow. The owner proves who it is with its certificate (verified
against the configured PKI: chain, validity, revocation → OIN) and proves possession of
the private key by signing a fresh random nonce that is verified with the certificate's
public key.

Owner-managed copies live in ``flow_copies``; once a berichtsoort has a row there it
overrides the config's ``copies`` in every registry snapshot, so a later
``digipoort registry load`` does not undo the owner's decision. Every change and every
refused attempt is written to ``registry_audit`` (actor = the OIN), and other processes
are told through ``pg_notify`` on the registry channel. Envelopes already routed keep
their recipients (fixed in ``deliveries``); new envelopes follow the new list.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from digipoort import metrics
from digipoort.config import Settings
from digipoort.pki.trust import CertificateRejected, CertificateVerifier, oin_from_certificate
from digipoort.registry import Berichtsoort
from digipoort.registry_store import CHANNEL

log = structlog.get_logger(__name__)


class FlowChangeRefused(Exception):
    """The change was refused (and audited); ``reason`` is a stable label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Owner:
    """An OIN proven by certificate and key possession."""

    oin: str
    subject: str


def prove_possession(cert: x509.Certificate, key_pem: bytes) -> None:
    """Sign a fresh nonce with the key, verify it with the certificate's public key."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise FlowChangeRefused("key_unusable", str(exc)) from None
    nonce = secrets.token_bytes(32)
    public = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPrivateKey) and isinstance(public, rsa.RSAPublicKey):
            signature = key.sign(nonce, padding.PKCS1v15(), hashes.SHA256())
            public.verify(signature, nonce, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(
            public, ec.EllipticCurvePublicKey
        ):
            signature = key.sign(nonce, ec.ECDSA(hashes.SHA256()))
            public.verify(signature, nonce, ec.ECDSA(hashes.SHA256()))
        else:
            raise FlowChangeRefused("key_mismatch", "key type does not match the certificate")
    except InvalidSignature:
        raise FlowChangeRefused(
            "key_mismatch", "the key does not belong to the certificate"
        ) from None


def authenticate(settings: Settings, cert_path: Path, key_path: Path) -> Owner:
    """Verify the certificate with the configured PKI and prove possession of the key."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise FlowChangeRefused("certificate_unreadable", str(exc)) from None
    pki = settings.pki
    verifier = CertificateVerifier.from_files(
        settings.resolve(pki.ca_file),
        [settings.resolve(p) for p in pki.crl_files],
        settings.resolve(pki.intermediates_file) if pki.intermediates_file else None,
        require_crl=pki.require_crl,
    )
    try:
        identity = verifier.verify(cert)
    except CertificateRejected as exc:
        raise FlowChangeRefused("certificate_rejected", str(exc)) from None
    try:
        key_pem = key_path.read_bytes()
    except OSError as exc:
        raise FlowChangeRefused("key_unusable", str(exc)) from None
    prove_possession(cert, key_pem)
    return Owner(identity.oin, identity.subject)


def claimed_actor(cert_path: Path) -> str:
    """For auditing a refused attempt whose certificate did not verify."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return "unverified"
    return f"unverified:{oin_from_certificate(cert) or '?'}"


async def audit(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    action: str,
    subject: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO registry_audit (actor, action, subject, detail) VALUES ($1, $2, $3, $4)",
        actor,
        action,
        subject,
        json.loads(json.dumps(detail, default=str)),
    )


async def refuse(
    conn: asyncpg.Connection | asyncpg.Pool,
    actor: str,
    flow: str,
    exc: FlowChangeRefused,
    detail: dict[str, Any],
) -> None:
    """Audit a refused attempt, count and log it."""
    await audit(
        conn,
        actor,
        "flow.copies.refused",
        flow,
        {**detail, "reason": exc.reason, "detail": exc.detail},
    )
    metrics.FLOW_COPIES_CHANGES.labels("refused").inc()
    log.warning("flow copies change refused", actor=actor, flow=flow, reason=exc.reason)


async def _berichtsoort(conn: asyncpg.Connection, flow: str) -> Berichtsoort | None:
    definition = await conn.fetchval(
        "SELECT definition FROM berichtsoorten WHERE name = $1 AND active", flow
    )
    return None if definition is None else Berichtsoort.model_validate(definition)


async def current_copies(conn: asyncpg.Connection, flow: str) -> tuple[list[str], str] | None:
    """The effective copy recipients of ``flow`` and where they come from (owner|config)."""
    soort = await _berichtsoort(conn, flow)
    if soort is None:
        return None
    row = await conn.fetchrow("SELECT copies FROM flow_copies WHERE berichtsoort = $1", flow)
    if row is not None:
        return list(row["copies"]), "owner"
    return list(soort.copies), "config"


async def change_copies(
    conn: asyncpg.Connection,
    flow: str,
    actor_oin: str,
    *,
    add: str | None = None,
    remove: str | None = None,
) -> list[str]:
    """Add or remove one copy recipient as ``actor_oin``; refused (and audited) unless
    the actor is the flow's owner. Returns the new list."""
    action = "add" if add is not None else "remove"
    target = add if add is not None else remove
    assert target is not None
    detail: dict[str, Any] = {"change": action, "oin": target}
    try:
        async with conn.transaction():
            # serialise changes to one flow
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('flow_copies:' || $1))", flow)
            soort = await _berichtsoort(conn, flow)
            if soort is None:
                raise FlowChangeRefused("unknown_flow", f"berichtsoort {flow!r} is onbekend")
            if actor_oin != soort.owner:
                raise FlowChangeRefused(
                    "not_owner", f"{actor_oin} is not the owner of {flow} ({soort.owner})"
                )
            current = await current_copies(conn, flow)
            assert current is not None
            copies = list(current[0])
            if add is not None:
                known = await conn.fetchval(
                    "SELECT 1 FROM participants WHERE oin = $1 AND active", add
                )
                if not known:
                    raise FlowChangeRefused("unknown_participant", f"{add} is not a participant")
                if add not in copies:
                    copies.append(add)
            elif remove in copies:
                copies.remove(remove)
            await conn.execute(
                "INSERT INTO flow_copies (berichtsoort, copies, set_by) VALUES ($1, $2, $3)"
                " ON CONFLICT (berichtsoort) DO UPDATE SET copies = $2, set_by = $3,"
                " updated_at = now()",
                flow,
                copies,
                actor_oin,
            )
            await audit(
                conn,
                actor_oin,
                f"flow.copies.{action}",
                flow,
                {**detail, "before": current[0], "after": copies},
            )
            await conn.execute("SELECT pg_notify($1, 'changed')", CHANNEL)
    except FlowChangeRefused as exc:
        await refuse(conn, actor_oin, flow, exc, detail)
        raise
    metrics.FLOW_COPIES_CHANGES.labels("changed").inc()
    log.info("flow copies changed", actor=actor_oin, flow=flow, change=action, oin=target)
    return copies
