-- The portal (issue 14): operator audit, the metering ledger, and indexes for the
-- message-log search (keyset pagination on (tijdstempel_aangeleverd, kenmerk) under
-- every filter, so a page costs the same at 1 M envelopes as at 1 000).

-- Every operator action taken in the console or the API: who (OIN and certificate
-- fingerprint), what, on which envelope/recipient, why, and what came of it.
CREATE TABLE portal_audit (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    operator_oin  text NOT NULL,
    fingerprint   text NOT NULL,
    action        text NOT NULL,
    kenmerk       uuid,
    recipient_oin text,
    reason        text NOT NULL,
    outcome       text NOT NULL
);
CREATE INDEX portal_audit_kenmerk ON portal_audit (kenmerk, id);

-- Metering: a durable ledger per organisation per month, counted from the database
-- (envelopes aangeleverd by the sender, statuses 400 per recipient for afgeleverd).
-- A closed month is written once and never recounted.
CREATE TABLE metering_ledger (
    organisation_oin text NOT NULL,
    month            date NOT NULL,
    aangeleverd      bigint NOT NULL,
    afgeleverd       bigint NOT NULL,
    rijksoverheid    boolean NOT NULL,
    tariff_eur       numeric(10, 4) NOT NULL,
    amount_eur       numeric(14, 2) NOT NULL,
    closed_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (month, organisation_oin)
);

CREATE INDEX envelopes_time ON envelopes (tijdstempel_aangeleverd DESC, kenmerk DESC);
CREATE INDEX envelopes_sender_time
    ON envelopes (sender_oin, tijdstempel_aangeleverd DESC, kenmerk DESC);
CREATE INDEX envelopes_soort_time
    ON envelopes (berichtsoort, tijdstempel_aangeleverd DESC, kenmerk DESC);
CREATE INDEX envelopes_koppelvlak_time
    ON envelopes (koppelvlak, tijdstempel_aangeleverd DESC, kenmerk DESC);
CREATE INDEX envelopes_aanleverkenmerk ON envelopes (aanleverkenmerk)
    WHERE aanleverkenmerk IS NOT NULL;
CREATE INDEX deliveries_recipient_time ON deliveries (recipient_oin, created_at DESC, kenmerk);
CREATE INDEX statuses_code ON statuses (code, kenmerk);
-- envelopes found by a rare status code are ordered by time from this index alone
CREATE INDEX envelopes_kenmerk_cover ON envelopes (kenmerk)
    INCLUDE (tijdstempel_aangeleverd, sender_oin, berichtsoort, koppelvlak, aanleverkenmerk);
