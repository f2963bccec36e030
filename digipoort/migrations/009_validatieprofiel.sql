-- Which validation profile (and artefact versions) judged an envelope (issue 13).
ALTER TABLE envelopes ADD COLUMN IF NOT EXISTS validatieprofiel text;
