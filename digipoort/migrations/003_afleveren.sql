-- Afleveren (issue 4): owner-managed copy recipients and operator actions on dead letters.

-- Copy recipients of a berichtsoort as set by its flow owner (berichtstroomeigenaar).
-- Once a row exists it overrides the config's `copies` in the registry snapshot, so a
-- later `digipoort registry load` does not undo the owner's decision.
CREATE TABLE flow_copies (
    berichtsoort text PRIMARY KEY,
    copies       text[] NOT NULL DEFAULT '{}',
    set_by       text NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Every operator action on the dead-letter queue (retry, discard): nothing disappears
-- without a trace.
CREATE TABLE dead_letter_actions (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    kenmerk  text,
    stage    text NOT NULL,
    reason   text NOT NULL DEFAULT ''
);
CREATE INDEX dead_letter_actions_kenmerk ON dead_letter_actions (kenmerk);
