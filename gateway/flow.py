"""Flow control for the dispatcher: a rate limiter and a circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-9
Monotonic = Callable[[], float]


class RateLimiter:
    """A token bucket: `rate` acquisitions per second on average, bursts up to `burst`."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Monotonic = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()

    async def acquire(self) -> None:
        while True:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= 1 - _EPSILON:  # float rounding must not spin on tiny sleeps
                self._tokens = max(0.0, self._tokens - 1)
                return
            await self._sleep((1 - self._tokens) / self.rate)


class CircuitBreaker:
    """Per-endpoint: after `threshold` consecutive failures, hold attempts for `cooldown`
    seconds so a dead endpoint does not tie up the channel's slots."""

    def __init__(self, threshold: int, cooldown: float, *, clock: Monotonic = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}

    def delay(self, endpoint_id: str) -> float:
        """Seconds to wait before trying `endpoint_id`; 0 when the circuit is closed."""
        until = self._open_until.get(endpoint_id)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    def is_open(self, endpoint_id: str) -> bool:
        return self.delay(endpoint_id) > 0

    def success(self, endpoint_id: str) -> None:
        self._failures.pop(endpoint_id, None)
        self._open_until.pop(endpoint_id, None)

    def failure(self, endpoint_id: str) -> None:
        n = self._failures.get(endpoint_id, 0) + 1
        self._failures[endpoint_id] = n
        if n >= self.threshold:
            self._open_until[endpoint_id] = self._clock() + self.cooldown
