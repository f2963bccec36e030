"""Prometheus metrics of the non-repudiation archive (``digipoort_archive_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from digipoort.metrics import LATENCY_BUCKETS

RECORDS = Counter(
    "digipoort_archive_records_total",
    "Archive records by koppelvlak and outcome (archived, failed).",
    ["koppelvlak", "outcome"],
)
BYTES = Counter("digipoort_archive_bytes_total", "Bytes written to archive segments.")
WRITE_LATENCY = Histogram(
    "digipoort_archive_write_seconds",
    "From handing a record to the archive writer until it is durable (fsync'ed).",
    buckets=LATENCY_BUCKETS,
)
BATCH = Histogram(
    "digipoort_archive_batch_records",
    "Records made durable by one fsync (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
FAILURES = Counter(
    "digipoort_archive_failures_total",
    "Archive failures by reason (write: a batch not written or not fsync'ed; maintenance).",
    ["reason"],
)
DAYS = Counter(
    "digipoort_archive_days_total",
    "Archive days by what happened to them (closed, close_failed, purged).",
    ["outcome"],
)
