-- Idempotent resubmission (issue 18, item 5; docs/reliability.md).
-- One row per submission that carried an aanleverkenmerk: `sleutel` is the SHA-256 of
-- (sender OIN, berichtsoort, aanleverkenmerk, the SHA-256 of every document in order).
-- The primary key makes two identical concurrent submissions race-safe (INSERT ... ON
-- CONFLICT); the sweeper deletes rows older than intake.resubmission_window_seconds, so
-- the table and its index hold one window of submissions at most.
CREATE TABLE IF NOT EXISTS resubmission_keys (
    sleutel     bytea PRIMARY KEY,
    kenmerk     uuid NOT NULL REFERENCES envelopes ON DELETE CASCADE
                DEFERRABLE INITIALLY DEFERRED,
    tijdstempel timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS resubmission_keys_tijdstempel ON resubmission_keys (tijdstempel);
CREATE INDEX IF NOT EXISTS resubmission_keys_kenmerk ON resubmission_keys (kenmerk);
