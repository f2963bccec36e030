-- The POP3 mailbox partitioned by month too (issue 16 part 3; docs/reliability.md
-- "Retention and partitions"). pop3_mailbox becomes one of the history_tables: RANGE-
-- partitioned by kenmerk with the same partitions as envelopes, so a month's return mails
-- are created ahead, exported and purged together with the month's envelopes.
--
-- Keys: every key of a partitioned table contains the partition key. The primary key is
-- (kenmerk, id) (ids still come from the one sequence: unique and increasing); "one mail
-- per status" is UNIQUE (kenmerk, status_id), which is the same thing because a status
-- belongs to one kenmerk (adapters/smtp/returns.py: ON CONFLICT (kenmerk, status_id));
-- uid is UNIQUE (kenmerk, uid) (uids are random 128-bit values). The owner's listing
-- keeps its index (owner_oin, id): one small index scan per partition, merged in id order.
--
-- kenmerk is NOT NULL now. Rows written before without one get their status's kenmerk,
-- or else the bound of the month they were created in (a key, not an envelope's kenmerk:
-- such a row then ages out with that month, or with the legacy partition if older than
-- the partitions).

UPDATE pop3_mailbox m SET kenmerk = s.kenmerk
FROM statuses s WHERE m.kenmerk IS NULL AND s.id = m.status_id;
UPDATE pop3_mailbox SET kenmerk = digipoort_kenmerk_bound(created_at) WHERE kenmerk IS NULL;

ALTER TABLE pop3_mailbox RENAME TO pop3_mailbox_unpartitioned;
ALTER SEQUENCE pop3_mailbox_id_seq OWNED BY NONE;

CREATE TABLE pop3_mailbox (
    id          bigint NOT NULL DEFAULT nextval('pop3_mailbox_id_seq'),
    owner_oin   text NOT NULL,
    uid         text NOT NULL,
    status_id   bigint,
    kenmerk     uuid NOT NULL,
    message     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (kenmerk);

-- the same partitions (bounds and suffixes) as envelopes has now
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT substr(c.relname, length('envelopes_') + 1) AS suffix,
                    pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'envelopes'::regclass LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF pop3_mailbox %s',
                       'pop3_mailbox_' || r.suffix, r.bound);
    END LOOP;
END $$;

INSERT INTO pop3_mailbox (id, owner_oin, uid, status_id, kenmerk, message, created_at)
SELECT id, owner_oin, uid, status_id, kenmerk, message, created_at FROM pop3_mailbox_unpartitioned;
DROP TABLE pop3_mailbox_unpartitioned;
ALTER SEQUENCE pop3_mailbox_id_seq OWNED BY pop3_mailbox.id;

ALTER TABLE pop3_mailbox ADD CONSTRAINT pop3_mailbox_pkey PRIMARY KEY (kenmerk, id);
ALTER TABLE pop3_mailbox ADD CONSTRAINT pop3_mailbox_uid_key UNIQUE (kenmerk, uid);
ALTER TABLE pop3_mailbox ADD CONSTRAINT pop3_mailbox_status_id_key UNIQUE (kenmerk, status_id);
CREATE INDEX pop3_mailbox_owner ON pop3_mailbox (owner_oin, id);

-- purged after the other children of a month, before envelopes (rank 9)
INSERT INTO history_tables VALUES ('pop3_mailbox', 8);

ANALYZE pop3_mailbox;
