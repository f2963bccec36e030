-- Core schema: registry, envelopes, documents, status history, deliveries.

CREATE TABLE participants (
    oin         text PRIMARY KEY,
    name        text NOT NULL,
    roles       text[] NOT NULL DEFAULT '{}',
    aflever     jsonb NOT NULL DEFAULT '{"kind": "queue"}',
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE berichtsoorten (
    name        text PRIMARY KEY,
    definition  jsonb NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registry_audit (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    subject     text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}'
);

CREATE TABLE envelopes (
    kenmerk                 uuid PRIMARY KEY,
    berichtsoort            text NOT NULL,
    koppelvlak              text NOT NULL,
    sender_oin              text NOT NULL,
    aanleverkenmerk         text,
    eerder_aanleverkenmerk  text,
    berichtkenmerk          text NOT NULL,
    belanghebbende_nummer   text NOT NULL,
    belanghebbende_type     text NOT NULL,
    rol_belanghebbende      text NOT NULL,
    ontvanger_nummer        text,
    ontvanger_type          text,
    rol_ontvanger           text,
    autorisatie_adres       text,
    tijdstempel_aangeleverd timestamptz NOT NULL,
    stage                   text NOT NULL DEFAULT 'aangeboden',
    handed_off              boolean NOT NULL DEFAULT false,
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX envelopes_sender ON envelopes (sender_oin, berichtsoort, tijdstempel_aangeleverd);
CREATE INDEX envelopes_unhanded ON envelopes (tijdstempel_aangeleverd)
    WHERE NOT handed_off AND stage = 'aangeboden';

-- seq 0 is berichtInhoud, 1.. are bijlagen. Small documents live in `data`;
-- large ones in the payload store under their SHA-256 (`data` NULL).
CREATE TABLE documents (
    kenmerk      uuid NOT NULL REFERENCES envelopes ON DELETE CASCADE,
    seq          smallint NOT NULL,
    mime_type    text NOT NULL,
    bestandsnaam text NOT NULL,
    size         bigint NOT NULL,
    sha256       text NOT NULL,
    data         bytea,
    PRIMARY KEY (kenmerk, seq)
);
CREATE INDEX documents_sha256 ON documents (sha256) WHERE data IS NULL;

CREATE TABLE statuses (
    id               bigserial PRIMARY KEY,
    kenmerk          uuid NOT NULL,
    recipient_oin    text,
    code             text NOT NULL,
    tijdstempel      timestamptz NOT NULL,
    omschrijving     text NOT NULL,
    foutcode         text,
    foutbeschrijving text,
    details          text
);
CREATE INDEX statuses_kenmerk ON statuses (kenmerk, id);
-- A stage that is redelivered writes its statuses again: these are recorded once.
CREATE UNIQUE INDEX statuses_once ON statuses (kenmerk, coalesce(recipient_oin, ''), code)
    WHERE code IN ('105','100','110','200','210','220','230','301','311','321','405','400','410');

CREATE TABLE deliveries (
    kenmerk         uuid NOT NULL REFERENCES envelopes ON DELETE CASCADE,
    recipient_oin   text NOT NULL,
    channel         text NOT NULL DEFAULT 'queue',
    state           text NOT NULL DEFAULT 'pending',
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kenmerk, recipient_oin)
);
CREATE INDEX deliveries_recipient ON deliveries (recipient_oin, state);
