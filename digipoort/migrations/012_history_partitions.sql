-- Years of history (issue 16 part 3; docs/reliability.md "Retention and partitions").
--
-- Every table keyed by kenmerk is RANGE-partitioned by kenmerk, one partition per month.
-- New kenmerken are UUIDv7 (digipoort.envelope.new_kenmerk): their first 48 bits are the
-- Unix time in ms, so the kenmerken of one month form one contiguous uuid range and every
-- primary key and ON CONFLICT (kenmerk, ...) stays as it was. All tables of one month are
-- purged together by dropping their partitions (digipoort/partitions.py), never by
-- row-by-row deletes.
--
-- Partitions of each table T:
--   T_legacy      [MINVALUE, bound(first month))  most older (uuid4) rows, see below
--   T_pYYYYMM     [bound(month), bound(next month))  created ahead by the retention component
--   T_legacy_hi   [bound(2100-01), MAXVALUE)        uuid4 rows whose random prefix is >= 2100
--   T_default     DEFAULT                           never refuses an insert
-- uuid4 kenmerken from before this migration have a random prefix: ~99 % fall in
-- T_legacy_hi, the rest in T_legacy, the default partition, or (about 1 in 100 000 per
-- month) a month partition. They age out as documented in docs/reliability.md.
--
-- The first month is the current month (UTC), or the setting digipoort.partitions_from
-- ('YYYY-MM-01') of the migrating session (benchmarks and tests that seed past months).
--
-- Foreign keys to envelopes are dropped: a month of every table is detached and dropped
-- as a whole, and rows of the default partition move into a new month partition table by
-- table; the child rows are written in the envelope's own transaction (intake), which is
-- what kept them consistent in practice.

CREATE FUNCTION digipoort_kenmerk_bound(ts timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (lpad(to_hex(floor(extract(epoch FROM ts) * 1000)::bigint), 12, '0')
            || '00000000000000000000')::uuid
$$;

-- The month (first day, UTC) a UUIDv7 kenmerk belongs to.
CREATE FUNCTION digipoort_kenmerk_month(k uuid) RETURNS date
    LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (date_trunc('month', to_timestamp(
        ('x' || lpad(substr(replace(k::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
        / 1000.0) AT TIME ZONE 'UTC'))::date
$$;

-- Which partitioned tables exist and in which order a month is purged (children first).
CREATE TABLE history_tables (
    name       text PRIMARY KEY,
    purge_rank smallint NOT NULL
);
INSERT INTO history_tables VALUES
    ('statuses', 1), ('gb_fetches', 2), ('gb_references', 3), ('deliveries', 4),
    ('smtp_submissions', 5), ('documents', 6), ('wus_statuses_returned', 7), ('envelopes', 9);

-- Every purged month: what was removed, when and by whom (export file if any).
CREATE TABLE history_purges (
    id          bigserial PRIMARY KEY,
    month       text NOT NULL,
    purged_at   timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    envelopes   bigint NOT NULL,
    statuses    bigint NOT NULL,
    payloads    bigint NOT NULL,
    export_path text
);

CREATE FUNCTION digipoort_partition_convert(tbl text, first_month date) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    old text := tbl || '_unpartitioned';
    r record;
    m date;
    defs text[] := '{}';
    seqs text[] := '{}';
    d text;
BEGIN
    EXECUTE format('ALTER TABLE %I RENAME TO %I', tbl, old);
    -- constraints (primary keys, uniques), other indexes and triggers, to recreate
    FOR r IN SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint
             WHERE conrelid = old::regclass AND contype IN ('p', 'u') LOOP
        IF tbl = 'wus_statuses_returned' AND r.conname = 'wus_statuses_returned_pkey' THEN
            -- a status belongs to one kenmerk: unique per (caller, status) as before
            defs := array_append(defs, 'ALTER TABLE wus_statuses_returned ADD CONSTRAINT'
                                 ' wus_statuses_returned_pkey PRIMARY KEY (kenmerk, caller_oin, status_id)');
        ELSIF tbl = 'statuses' AND r.conname = 'statuses_pkey' THEN
            defs := array_append(defs, 'ALTER TABLE statuses ADD CONSTRAINT statuses_pkey PRIMARY KEY (kenmerk, id)');
            defs := array_append(defs, 'CREATE INDEX statuses_id ON statuses (id)');
        ELSE
            defs := array_append(defs, format('ALTER TABLE %I ADD CONSTRAINT %I %s', tbl, r.conname, r.def));
        END IF;
    END LOOP;
    FOR r IN SELECT i.indexrelid::regclass::text AS name, pg_get_indexdef(i.indexrelid) AS def
             FROM pg_index i WHERE i.indrelid = old::regclass
               AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid)
               -- (kenmerk, id) is the primary key of partitioned statuses now
               AND i.indexrelid::regclass::text <> 'statuses_kenmerk' LOOP
        defs := array_append(defs, replace(r.def, ' ON public.' || old || ' ', ' ON public.' || tbl || ' '));
    END LOOP;
    FOR r IN SELECT pg_get_triggerdef(oid) AS def FROM pg_trigger
             WHERE tgrelid = old::regclass AND NOT tgisinternal LOOP
        defs := array_append(defs, replace(r.def, ' ON public.' || old || ' ', ' ON public.' || tbl || ' '));
    END LOOP;
    FOR r IN SELECT a.attname, pg_get_serial_sequence(old, a.attname) AS seq FROM pg_attribute a
             WHERE a.attrelid = old::regclass AND a.attnum > 0 AND NOT a.attisdropped
               AND pg_get_serial_sequence(old, a.attname) IS NOT NULL LOOP
        EXECUTE format('ALTER SEQUENCE %s OWNED BY NONE', r.seq);
        seqs := array_append(seqs, format('ALTER SEQUENCE %s OWNED BY %I.%I', r.seq, tbl, r.attname));
    END LOOP;
    -- indexes are built after the copy; index names are freed by dropping the old table
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING STORAGE'
                   ' INCLUDING COMMENTS) PARTITION BY RANGE (kenmerk)', tbl, old);
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (MINVALUE) TO (%L)',
                   tbl || '_legacy', tbl, digipoort_kenmerk_bound(first_month::timestamp AT TIME ZONE 'UTC'));
    m := first_month;
    WHILE m <= (date_trunc('month', now() AT TIME ZONE 'UTC') + interval '3 months')::date LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       tbl || '_p' || to_char(m, 'YYYYMM'), tbl,
                       digipoort_kenmerk_bound(m::timestamp AT TIME ZONE 'UTC'),
                       digipoort_kenmerk_bound((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
        m := (m + interval '1 month')::date;
    END LOOP;
    EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (MAXVALUE)',
                   tbl || '_legacy_hi', tbl, digipoort_kenmerk_bound('2100-01-01 00:00:00+00'));
    EXECUTE format('CREATE TABLE %I PARTITION OF %I DEFAULT', tbl || '_default', tbl);
    EXECUTE format('INSERT INTO %I SELECT * FROM %I', tbl, old);
    EXECUTE format('DROP TABLE %I', old);
    FOREACH d IN ARRAY defs || seqs LOOP
        EXECUTE d;
    END LOOP;
END $$;

DO $$
DECLARE
    first_month date := coalesce(
        nullif(current_setting('digipoort.partitions_from', true), '')::date,
        date_trunc('month', now() AT TIME ZONE 'UTC')::date);
    r record;
BEGIN
    -- foreign keys to envelopes (and between the partitioned tables) go first
    FOR r IN SELECT conrelid::regclass::text AS tbl, conname FROM pg_constraint
             WHERE contype = 'f' AND confrelid = 'envelopes'::regclass LOOP
        EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', r.tbl, r.conname);
    END LOOP;
    -- the getNieuweStatussen bookkeeping gets the kenmerk of its status (its month key);
    -- rows whose status no longer exists are of no use and are left out
    ALTER TABLE wus_statuses_returned ADD COLUMN kenmerk uuid;
    UPDATE wus_statuses_returned w SET kenmerk = s.kenmerk FROM statuses s WHERE s.id = w.status_id;
    DELETE FROM wus_statuses_returned WHERE kenmerk IS NULL;
    ALTER TABLE wus_statuses_returned ALTER COLUMN kenmerk SET NOT NULL;
    FOR r IN SELECT name FROM history_tables ORDER BY purge_rank DESC LOOP
        PERFORM digipoort_partition_convert(r.name, first_month);
    END LOOP;
    -- getNieuweStatussen looks envelopes up by belanghebbende and berichtsoort in every
    -- month: without this index it reads all envelopes of the sender and berichtsoort
    CREATE INDEX envelopes_belanghebbende ON envelopes (belanghebbende_nummer, berichtsoort);
    -- autovacuum never analyzes a partitioned parent (the retention component does, daily)
    FOR r IN SELECT name FROM history_tables LOOP
        EXECUTE format('ANALYZE %I', r.name);
    END LOOP;
END $$;

DROP FUNCTION digipoort_partition_convert(text, date);
