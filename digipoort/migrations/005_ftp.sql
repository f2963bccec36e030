-- Koppelvlak FTP: files a participant deleted from its /out/ directory (status files,
-- deliveries). They are rendered from the database, so a deletion is remembered here and
-- the file stays deleted.
CREATE TABLE IF NOT EXISTS ftp_deleted (
    oin        text NOT NULL,
    name       text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (oin, name)
);
