-- Issue 15 item 2: marking an envelope handed_off is a HOT update.
-- A column named in an index (or in a partial index's predicate) makes every UPDATE of it
-- write a new entry into every index of the table (nine on envelopes). The sweeper's index
-- now names only stage; it still finds the envelopes not handed off by filtering the few
-- rows of stage 'aangeboden' (the envelopes not yet validated). Free space on each page
-- (fillfactor) leaves room for the new row version next to the old one.
DROP INDEX IF EXISTS envelopes_unhanded;
CREATE INDEX envelopes_unhanded ON envelopes (tijdstempel_aangeleverd)
    WHERE stage = 'aangeboden';
-- envelopes is partitioned by month (012): storage parameters live on the partitions (a
-- partitioned table refuses them); partitions created later copy the DEFAULT partition's.
DO $$
DECLARE part regclass;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'envelopes'::regclass) = 'p' THEN
        FOR part IN SELECT i.inhrelid::regclass FROM pg_inherits i
                JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'envelopes'::regclass AND c.relkind = 'r' LOOP
            EXECUTE format('ALTER TABLE %s SET (fillfactor = 85)', part);
        END LOOP;
    ELSE
        ALTER TABLE envelopes SET (fillfactor = 85);
    END IF;
END $$;
