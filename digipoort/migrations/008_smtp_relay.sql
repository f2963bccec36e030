-- SMTP relay delivery (issue 7): deliveries with channel 'smtp' share the push schedule of
-- 'wus' (attempts, next_attempt_at, last_error; claimed by the `deliverer`).

DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (coalesce(next_attempt_at, created_at))
    WHERE channel IN ('wus', 'smtp') AND state = 'pending';

DROP TRIGGER deliveries_push_notify ON deliveries;
CREATE TRIGGER deliveries_push_notify AFTER INSERT ON deliveries
    FOR EACH ROW WHEN (NEW.channel IN ('wus', 'smtp')) EXECUTE FUNCTION deliveries_notify_push();
