"""Retry policy per channel: tenacity's exponential backoff with jitter capped by `max_s`, until
a hard deadline, the warning's expires_at (design.md "Delivery under faults": a warning is worth
delivering until it expires). `attempts` bounds nothing: it is kept for the bookkeeping of
older configs.

Only `TransientDeliveryError` is retried; a `Retry-After` from the far side lengthens the wait
(never past the deadline). When the next backoff would pass the deadline, one last attempt is
made `LAST_TRY_S` before it.
The dispatcher asks for the next wait after each failed attempt and requeues the delivery when
it has passed, so a delivery waiting for its retry holds no worker of its channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from tenacity import RetryCallState, wait_exponential_jitter

from gateway.exceptions import TransientDeliveryError

DEFAULT_ATTEMPTS = 6
DEFAULT_INITIAL_S = 1.0
DEFAULT_MAX_S = 60.0
DEFAULT_JITTER_S = 1.0
LAST_TRY_S = 1.0
"""A delivery whose backoff would pass its deadline tries once more this long before it."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = DEFAULT_ATTEMPTS
    initial_s: float = DEFAULT_INITIAL_S
    max_s: float = DEFAULT_MAX_S
    jitter_s: float = DEFAULT_JITTER_S

    def next_wait(self, attempt: int, error: TransientDeliveryError, left_s: float) -> float | None:
        """Seconds to wait after attempt number `attempt` (counted across restarts) failed with
        `error`; None when the delivery gives up: `left_s`, the seconds left before the
        deadline, is too short for another attempt."""
        if left_s <= LAST_TRY_S / 2:
            return None
        backoff = wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=self.jitter_s
        )
        # The strategy reads only the attempt number; the wait is decided now and slept
        # elsewhere (the delivery waits outside its queue), so tenacity's loop is not used.
        state = SimpleNamespace(attempt_number=attempt)
        wait = max(float(backoff(cast(RetryCallState, state))), error.retry_after or 0.0)
        return wait if wait < left_s - LAST_TRY_S else max(0.0, left_s - LAST_TRY_S)
