"""Retry policy per channel: tenacity's exponential backoff with jitter, a bound on attempts,
and a hard deadline that never passes the warning's expires_at.

Only `TransientDeliveryError` is retried; a `Retry-After` from the far side lengthens the wait.
The dispatcher asks for the next wait after each failed attempt and requeues the delivery when
it has passed, so a delivery waiting for its retry holds no worker of its channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from tenacity import (
    RetryCallState,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from gateway.channels.base import TransientDeliveryError

DEFAULT_ATTEMPTS = 6
DEFAULT_INITIAL_S = 1.0
DEFAULT_MAX_S = 60.0
DEFAULT_JITTER_S = 1.0


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = DEFAULT_ATTEMPTS
    initial_s: float = DEFAULT_INITIAL_S
    max_s: float = DEFAULT_MAX_S
    jitter_s: float = DEFAULT_JITTER_S

    def next_wait(self, attempt: int, error: TransientDeliveryError, left_s: float) -> float | None:
        """Seconds to wait after attempt number `attempt` (counted across restarts) failed with
        `error`; None when the delivery gives up: no attempt left, or the wait would reach
        `left_s`, the seconds left before the deadline (the warning's expiry)."""
        backoff = wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=self.jitter_s
        )
        stop = stop_after_attempt(self.attempts) | stop_before_delay(left_s)
        # The strategies read only these fields; the wait is decided now and slept elsewhere
        # (the delivery is put back in its queue), so tenacity's retry loop is not used.
        state = SimpleNamespace(attempt_number=attempt, seconds_since_start=0.0, upcoming_sleep=0.0)
        wait = max(float(backoff(cast(RetryCallState, state))), error.retry_after or 0.0)
        state.upcoming_sleep = wait
        return None if stop(cast(RetryCallState, state)) else wait
