-- Afleveren (issue 4): WUS push delivery with durable retries, and the Ophaalservice.
--
-- Push deliveries (channel 'wus') keep their retry schedule in `deliveries`:
-- `attempts`, `next_attempt_at` (NULL = due now) and `last_error`. The `deliverer`
-- component claims due rows with FOR UPDATE SKIP LOCKED, so several processes can run it.
-- States: pending -> delivered (400) | failed (410).
-- Ophaal deliveries (channel 'ophaal'): pending -> delivered when first fetched (400).

ALTER TABLE deliveries ADD COLUMN delivered_at timestamptz;

CREATE INDEX deliveries_due ON deliveries (coalesce(next_attempt_at, created_at))
    WHERE channel = 'wus' AND state = 'pending';
CREATE INDEX deliveries_ophaal ON deliveries (recipient_oin, created_at)
    WHERE channel = 'ophaal';

-- A new push delivery wakes the deliverers at once (they also poll).
CREATE FUNCTION deliveries_notify_push() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('digipoort_deliveries', NEW.recipient_oin);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deliveries_push_notify AFTER INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.channel = 'wus') EXECUTE FUNCTION deliveries_notify_push();
