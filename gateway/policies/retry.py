"""Retry policy per channel, built from tenacity's strategies.

Exponential backoff with jitter, a bound on attempts, and a hard deadline that never passes the
warning's expires_at (`stop_before_delay`). Only `TransientDeliveryError` is retried; a
`Retry-After` from the far side lengthens the wait. The sleep function is injected so tests
never really sleep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import cast

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
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

    def wait(self, done: int = 0) -> Callable[[RetryCallState], float]:
        """Exponential backoff with jitter, never shorter than the far side's Retry-After;
        `done` earlier attempts continue the exponent instead of restarting it."""
        base = wait_exponential_jitter(
            multiplier=self.initial_s, max=self.max_s, jitter=self.jitter_s
        )

        def wait(state: RetryCallState) -> float:
            shifted = cast(
                RetryCallState, SimpleNamespace(attempt_number=state.attempt_number + done)
            )
            delay = float(base(shifted))
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, TransientDeliveryError) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            return delay

        return wait

    def first_wait(self, error: TransientDeliveryError) -> float:
        """The wait after a first attempt that failed with `error` (made without tenacity, so
        the common case, success at once, builds no retry machinery)."""
        delay = float(
            wait_exponential_jitter(
                multiplier=self.initial_s, max=self.max_s, jitter=self.jitter_s
            )(cast(RetryCallState, SimpleNamespace(attempt_number=1)))
        )
        return max(delay, error.retry_after or 0.0)

    def retrying(
        self, *, done: int, deadline_s: float, sleep: Callable[[float], Awaitable[None]]
    ) -> AsyncRetrying:
        """Attempts left after `done` earlier ones (e.g. before a restart), within `deadline_s`."""
        return AsyncRetrying(
            stop=stop_after_attempt(max(1, self.attempts - done)) | stop_before_delay(deadline_s),
            wait=self.wait(done),
            retry=retry_if_exception_type(TransientDeliveryError),
            sleep=sleep,
            reraise=True,
        )
