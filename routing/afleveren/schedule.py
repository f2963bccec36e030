"""Push delivery policy, pure: retry backoff (exponential, full jitter, capped), the
retry window per recipient, and a circuit breaker per endpoint. No I/O, no clock of its
own (every function takes ``now``), so it is unit-testable without sockets or sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum


def backoff_delay(
    attempt: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based): full jitter,
    uniform in [0, min(cap, base * 2^(attempt-1))]."""
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(cap, base * 2 ** min(attempt - 1, 62))
    return (rng or random).uniform(0.0, ceiling)


@dataclass(frozen=True)
class Decision:
    """After a failed attempt: retry at ``retry_at``, or give up (``retry_at`` None)."""

    retry_at: datetime | None

    @property
    def give_up(self) -> bool:
        return self.retry_at is None


def after_failure(
    *,
    now: datetime,
    created_at: datetime,
    attempts: int,
    retry_for: timedelta,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> Decision:
    """The schedule after a failed attempt. The window runs from the delivery's creation;
    the last retry is at the window's end at the latest; past it the delivery fails."""
    deadline = created_at + retry_for
    if now >= deadline:
        return Decision(None)
    delay = timedelta(seconds=backoff_delay(attempts, base=base, cap=cap, rng=rng))
    return Decision(min(now + delay, deadline))


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass
class CircuitBreaker:
    """Per endpoint: opens after ``failures`` consecutive failures; after ``reset``
    seconds it lets one trial attempt through (half-open): success closes it, failure
    opens it again for another ``reset``."""

    failures: int
    reset: float
    _consecutive: int = 0
    _opened_at: datetime | None = None
    _trial: bool = field(default=False)

    def state(self, now: datetime) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if (now - self._opened_at).total_seconds() >= self.reset and not self._trial:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def half_open_at(self) -> datetime | None:
        """When an open breaker lets its trial through (None: closed, or a trial runs)."""
        if self._opened_at is None or self._trial:
            return None
        return self._opened_at + timedelta(seconds=self.reset)

    def begin_trial(self) -> None:
        """A half-open trial attempt is under way: no other attempts until it ends."""
        self._trial = True

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial = False

    def failure(self, now: datetime) -> None:
        self._consecutive += 1
        if self._trial or self._consecutive >= self.failures:
            self._opened_at = now
        self._trial = False
