-- Koppelvlak SMTP (issue 7): submissions received by mail, POP3 mailboxes for the return
-- mails, and the participants' POP3 passwords.

-- What the SMTP adapter knew about an accepted mail (the envelope itself is in envelopes).
CREATE TABLE smtp_submissions (
    kenmerk            uuid PRIMARY KEY REFERENCES envelopes ON DELETE CASCADE,
    message_id         text,
    mail_from          text NOT NULL DEFAULT '',
    smime_signer_oin   text,
    smime_subject      text,
    smime_fingerprint  text,
    received_at        timestamptz NOT NULL DEFAULT now()
);

-- Status rows of envelopes submitted over SMTP, waiting to become return mails. Filled
-- in the same transaction as the status itself (trigger below), so no status is missed
-- whatever order concurrent transactions commit in; the smtpreturns component turns each
-- row into at most one mailbox row and deletes it in one transaction.
CREATE TABLE smtp_return_queue (
    status_id  bigint PRIMARY KEY
);

CREATE FUNCTION smtp_enqueue_returns() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO smtp_return_queue (status_id)
    SELECT n.id FROM new_statuses n JOIN envelopes e ON e.kenmerk = n.kenmerk
    WHERE e.koppelvlak = 'smtp'
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM pg_notify('smtp_returns', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER statuses_smtp_returns AFTER INSERT ON statuses
    REFERENCING NEW TABLE AS new_statuses
    FOR EACH STATEMENT EXECUTE FUNCTION smtp_enqueue_returns();

-- Which status codes a sender wants as return mails (no row: the default set).
CREATE TABLE smtp_subscriptions (
    sender_oin  text PRIMARY KEY,
    codes       text[] NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- POP3 mailboxes: one per sender OIN. Rows leave only by DELE (+ QUIT).
CREATE TABLE pop3_mailbox (
    id          bigserial PRIMARY KEY,
    owner_oin   text NOT NULL,
    uid         text NOT NULL UNIQUE,
    status_id   bigint UNIQUE,
    kenmerk     uuid,
    message     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pop3_mailbox_owner ON pop3_mailbox (owner_oin, id);

-- POP3 passwords for participants without a client certificate: only a salted hash.
CREATE TABLE participant_passwords (
    oin         text PRIMARY KEY,
    hash        text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
