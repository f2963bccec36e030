"""Koppelvlak SMTP: SMTP-MSA submission (STARTTLS + client certificate) and POP3
mailboxes for the return mails. See docs/smtp.md."""
