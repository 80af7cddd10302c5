"""Flow control for the dispatcher: priority slots, a rate limiter and a circuit breaker.

`PrioritySlots` bounds a channel's concurrency and hands a freed slot to the waiter with the
lowest priority number first (level 1, red, before level 4, blue; FIFO within a level), so a red
warning never waits behind a queued blue fan-out.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-9
Monotonic = Callable[[], float]


class PrioritySlots:
    """At most `size` holders at a time; freed slots go to the most urgent waiter."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._free = size
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed over just as we were cancelled
            raise

    def release(self) -> None:
        while self._waiters:
            *_, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)
                return
        self._free += 1

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()


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
