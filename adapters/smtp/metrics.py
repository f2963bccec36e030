"""Metrics of the SMTP and POP3 koppelvlak (``digipoort_`` prefix, bounded labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

SMTP_SESSIONS = Counter(
    "digipoort_smtp_sessions_total",
    "SMTP sessions, by outcome (opened, busy).",
    ["outcome"],
)
SMTP_ACTIVE = Gauge("digipoort_smtp_sessions_active", "Open SMTP sessions.")
SMTP_MESSAGES = Counter(
    "digipoort_smtp_messages_total",
    "Mails received over SMTP, by outcome (accepted, refused, error).",
    ["outcome"],
)
SMTP_REFUSED = Counter(
    "digipoort_smtp_refused_total",
    "SMTP refusals, by reason (see docs/smtp.md).",
    ["reason"],
)
POP3_SESSIONS = Counter(
    "digipoort_pop3_sessions_total",
    "POP3 sessions, by outcome (opened, busy, authenticated, auth_failed, timeout).",
    ["outcome"],
)
POP3_ACTIVE = Gauge("digipoort_pop3_sessions_active", "Open POP3 sessions.")
POP3_COMMANDS_REFUSED = Counter(
    "digipoort_pop3_refused_total",
    "POP3 commands answered with -ERR, by reason.",
    ["reason"],
)
RETURN_MAILS = Counter(
    "digipoort_smtp_return_mails_total",
    "Return mails written to POP3 mailboxes, by status code.",
    ["code"],
)
RETURN_MAILS_DELETED = Counter(
    "digipoort_pop3_deleted_total", "Mails removed from POP3 mailboxes by DELE."
)
