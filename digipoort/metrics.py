"""Prometheus metrics: every metric the gateway exposes is defined here, in one place.

Names follow Prometheus conventions with the ``digipoort_`` prefix. Labels are bounded:
koppelvlak, stage, status code, foutcode, reason, recipient OIN (bounded by the
registry) — never a kenmerk.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)

INTAKE = Counter(
    "digipoort_intake_total",
    "Submissions handed to intake, by koppelvlak and outcome (accepted, resubmitted, refused,"
    " error).",
    ["koppelvlak", "outcome"],
)
INTAKE_REFUSED = Counter(
    "digipoort_intake_refused_total",
    "Submissions refused at intake, by koppelvlak and reason.",
    ["koppelvlak", "reason"],
)
ACCEPT_LATENCY = Histogram(
    "digipoort_accept_latency_seconds",
    "Time from intake call to kenmerk (durable accept).",
    ["koppelvlak"],
    buckets=LATENCY_BUCKETS,
)
INTAKE_BATCH = Histogram(
    "digipoort_intake_batch_size",
    "Envelopes committed per intake transaction (group commit).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
HANDOFF_FAILED = Counter(
    "digipoort_intake_handoff_failed_total",
    "Committed envelopes whose publish to RabbitMQ was not confirmed (the sweeper republishes).",
)
SWEEPER_REPUBLISHED = Counter(
    "digipoort_sweeper_republished_total",
    "Envelopes republished by the sweeper after an unconfirmed hand-off.",
)
STAGE_MESSAGES = Counter(
    "digipoort_stage_messages_total",
    "Work messages handled per stage and outcome.",
    ["stage", "outcome"],
)
STAGE_DURATION = Histogram(
    "digipoort_stage_batch_duration_seconds",
    "Time to handle one batch of work messages, per stage.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
STATUSES = Counter(
    "digipoort_statuses_total",
    "Statuses recorded, by status code.",
    ["code"],
)
VALIDATION_REFUSED = Counter(
    "digipoort_validation_refused_total",
    "Envelopes refused by the validation stage, by foutcode.",
    ["foutcode"],
)
DELIVERIES = Counter(
    "digipoort_deliveries_total",
    "Deliveries by recipient OIN, channel and outcome.",
    ["recipient", "channel", "outcome"],
)
END_TO_END = Histogram(
    "digipoort_end_to_end_seconds",
    "Time from tijdstempelAangeleverd to status 400 for a recipient.",
    buckets=LATENCY_BUCKETS,
)
DEAD_LETTERED = Counter(
    "digipoort_dead_lettered_total",
    "Work messages rejected to the dead-letter queue, by stage and reason.",
    ["stage", "reason"],
)
STAGE_WAITING = Gauge(
    "digipoort_stage_waiting",
    "1 while a stage holds its work through a database or broker outage.",
    ["stage"],
)
PUBLISH_NACKED = Counter(
    "digipoort_publish_nacked_total",
    "Publishes the broker refused (Basic.Nack), by exchange.",
    ["exchange"],
)
READY = Gauge(
    "digipoort_ready",
    "1 when the process is ready (database and broker reachable, topology declared).",
)
MESSAGES_METERED = Counter(
    "digipoort_messages_metered_total",
    "Messages per organisation for metering (submitted by sender, delivered to recipient).",
    ["oin", "direction"],
)
WUS_REQUESTS = Counter(
    "digipoort_wus_requests_total",
    "WUS SOAP requests by operation, outcome (ok, refused) and foutcode (ALS/STS, empty if ok).",
    ["operation", "outcome", "foutcode"],
)
WUS_LATENCY = Histogram(
    "digipoort_wus_request_seconds",
    "Time from the first request byte read to the answer, per WUS operation.",
    ["operation"],
    buckets=LATENCY_BUCKETS,
)
DEAD_LETTER_STATUSES = Counter(
    "digipoort_dead_letter_statuses_total",
    "Dead letters whose status was recorded in the sender's history, by stage and code.",
    ["stage", "code"],
)
DEAD_LETTER_ACTIONS = Counter(
    "digipoort_dead_letter_actions_total",
    "Operator actions on the dead-letter queue (retry, discard), by stage.",
    ["action", "stage"],
)
STATUS_REPORTS = Counter(
    "digipoort_status_reports_total",
    "zetStatus reports from recipients, by outcome (accepted, refused) and reason.",
    ["outcome", "reason"],
)
FLOW_COPIES_CHANGES = Counter(
    "digipoort_flow_copies_changes_total",
    "Owner-managed copy recipient changes, by outcome (changed, refused).",
    ["outcome"],
)

# -- operations (digipoort/opsmetrics.py): gauges are multi-process safe --------------------
# One process (the ``opsmetrics`` component) samples the broker and the PKI; every process
# samples its own database pool. Under ``serve --processes N`` the exposition merges them.
QUEUE_MESSAGES = Gauge(
    "digipoort_queue_messages",
    "Messages in a RabbitMQ queue of the gateway's vhost (ready + unacknowledged).",
    ["queue"],
    multiprocess_mode="livemax",
)
QUEUE_CONSUMERS = Gauge(
    "digipoort_queue_consumers",
    "Consumers attached to a RabbitMQ queue of the gateway's vhost.",
    ["queue"],
    multiprocess_mode="livemax",
)
QUEUE_SCRAPE_ERRORS = Counter(
    "digipoort_queue_scrape_errors_total",
    "Failed reads of the RabbitMQ management API by the queue-depth collector.",
)
DB_POOL = Gauge(
    "digipoort_db_pool_connections",
    "PostgreSQL pool connections by state (in_use, idle, max), summed over live processes.",
    ["state"],
    multiprocess_mode="livesum",
)
DB_STATS_AGE = Gauge(
    "digipoort_db_stats_age_seconds",
    "Seconds since the planner statistics of a hot table were gathered (ANALYZE or "
    "autoanalyze; +Inf: never). Stale statistics give plans that scan whole tables.",
    ["table"],
    multiprocess_mode="livemin",
)
DB_MODIFIED_SINCE_ANALYZE = Gauge(
    "digipoort_db_modified_since_analyze_ratio",
    "Rows of a hot table inserted, updated or deleted since its statistics were gathered, "
    "per live row (autoanalyze's trigger is 0.1).",
    ["table"],
    multiprocess_mode="livemax",
)
DB_DEAD_TUPLES = Gauge(
    "digipoort_db_dead_tuple_ratio",
    "Dead / (live + dead) rows of a hot table (pg_stat_user_tables): vacuum falls behind.",
    ["table"],
    multiprocess_mode="livemax",
)
CERTIFICATE_EXPIRY = Gauge(
    "digipoort_certificate_expiry_seconds",
    "Seconds until the gateway certificate, a trust anchor or intermediate expires, or a "
    "CRL's nextUpdate passes (kind: gateway, anchor, intermediate, crl). Negative: past.",
    ["subject", "kind"],
    multiprocess_mode="livemin",
)

# -- history partitions and retention (digipoort/partitions.py) ----------------------------
HISTORY_PURGED = Counter(
    "digipoort_history_months_purged_total", "History months (partitions) purged."
)
HISTORY_PURGED_ENVELOPES = Counter(
    "digipoort_history_envelopes_purged_total", "Envelopes removed with purged months."
)
HISTORY_PURGE_SECONDS = Histogram(
    "digipoort_history_purge_seconds",
    "Time to purge one month (detach, drop, payload files).",
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
HISTORY_MAINTENANCE_FAILURES = Counter(
    "digipoort_history_maintenance_failures_total",
    "Runs of the history maintenance (partitions ahead, ANALYZE, purge) that failed.",
)
HISTORY_PARTITIONS_CREATED = Counter(
    "digipoort_history_partitions_created_total", "Monthly partitions created ahead."
)
