"""Metrics of push delivery (the ``deliverer`` component)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CIRCUIT_OPEN = Gauge(
    "digipoort_circuit_breaker_open",
    "1 while the circuit breaker of a push endpoint is open (or half-open), by recipient OIN.",
    ["endpoint"],
    multiprocess_mode="max",
)
RETRIES = Counter(
    "digipoort_delivery_retries_total",
    "Failed push attempts that were scheduled for a retry, by recipient OIN.",
    ["recipient"],
)
ATTEMPTS = Counter(
    "digipoort_delivery_attempts_total",
    "Push delivery attempts by recipient OIN and outcome (delivered, failed, gave_up, refused).",
    ["recipient", "outcome"],
)
