-- Circuit breakers of the push deliverers (issue 14): the deliverer keeps its breakers in
-- memory and records each transition here, so the operator console (another process)
-- shows the real state. One row per recipient and deliverer process while its breaker is
-- open or half-open; the row is removed when the breaker closes or the deliverer stops.
-- Half-open is not written: it is open past opened_at + reset_seconds.
CREATE TABLE circuit_breakers (
    recipient_oin  text NOT NULL,
    deliverer      text NOT NULL,
    opened_at      timestamptz NOT NULL,
    reset_seconds  double precision NOT NULL,
    last_error     text,
    PRIMARY KEY (recipient_oin, deliverer)
);
