-- Koppelvlak WUS (adapters/wus): replay protection and "nieuwe statussen" bookkeeping.

-- wsa:MessageIDs seen recently, per signing OIN: a replayed request is refused.
-- Rows older than 2 x the clock skew are purged by the adapter.
CREATE TABLE wus_message_ids (
    sender_oin  text NOT NULL,
    message_id  text NOT NULL,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sender_oin, message_id)
);
CREATE INDEX wus_message_ids_seen ON wus_message_ids (seen_at);

-- Which statuses were already returned to which caller by getNieuweStatussenProces /
-- getNieuweStatussen: each status is returned to a caller once (the primary key makes
-- this exact under concurrent calls).
CREATE TABLE wus_statuses_returned (
    caller_oin  text NOT NULL,
    status_id   bigint NOT NULL,
    returned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller_oin, status_id)
);
