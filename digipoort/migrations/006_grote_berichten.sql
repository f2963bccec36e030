-- Digikoppeling Grote Berichten: documents delivered by reference, and their fetches.

CREATE TABLE gb_references (
    kenmerk     uuid NOT NULL REFERENCES envelopes ON DELETE CASCADE,
    seq         smallint NOT NULL,
    sha256      text NOT NULL,
    size        bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (kenmerk, seq)
);
CREATE INDEX gb_references_sha256 ON gb_references (sha256);

CREATE TABLE gb_fetches (
    kenmerk           uuid NOT NULL,
    seq               smallint NOT NULL,
    recipient_oin     text NOT NULL,
    requests          integer NOT NULL DEFAULT 0,
    bytes_sent        bigint NOT NULL DEFAULT 0,
    first_complete_at timestamptz,
    last_fetch_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kenmerk, seq, recipient_oin)
);

-- payloads removed by retention (content-addressed: removed when nothing needs them)
CREATE TABLE payload_removals (
    sha256      text PRIMARY KEY,
    removed_at  timestamptz NOT NULL DEFAULT now()
);

-- status 402 (document fetched by reference) is recorded once per recipient and document
CREATE UNIQUE INDEX statuses_once_402 ON statuses (kenmerk, coalesce(recipient_oin, ''), details)
    WHERE code = '402';
