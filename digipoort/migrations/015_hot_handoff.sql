-- Issue 15 item 2: marking an envelope handed_off is a HOT update.
-- A column named in an index (or in a partial index's predicate) makes every UPDATE of it
-- write a new entry into every index of the table (nine on envelopes). The sweeper's index
-- now names only stage; it still finds the envelopes not handed off by filtering the few
-- rows of stage 'aangeboden' (the envelopes not yet validated). Free space on each page
-- (fillfactor) leaves room for the new row version next to the old one.
DROP INDEX IF EXISTS envelopes_unhanded;
CREATE INDEX envelopes_unhanded ON envelopes (tijdstempel_aangeleverd)
    WHERE stage = 'aangeboden';
ALTER TABLE envelopes SET (fillfactor = 85);
