"""Flow control for the dispatcher: a rate limiter, a circuit breaker and the lead gate."""

from __future__ import annotations

import asyncio
import contextlib
import math
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


class LeadGate:
    """Lets one lead channel go first: the boards and loudspeakers, which reach everyone in an
    area at once. Other channels' workers hold back while the lead has queued deliveries as
    urgent as theirs (level number as low or lower) and is making progress; a lead that has
    finished no send for `stall_s` seconds (a broker down, say) holds no one back, and no one is
    held back more than `max_hold_s` after the lead's backlog began (a slow broker).

    The lead's workers report `queued`, `taken` and `progressed`; the others ask `holds` and
    `wait` before each send. On one core this only changes the order of work, not its sum."""

    LEVELS = 5

    def __init__(
        self, stall_s: float, max_hold_s: float, *, clock: Monotonic = time.monotonic
    ) -> None:
        self.stall_s = stall_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._since = -math.inf
        self._backlog = [0] * (self.LEVELS + 1)  # queued lead deliveries by level
        self._queued = 0
        self._last = -math.inf
        self._drained = asyncio.Event()
        self._drained.set()

    def queued(self, level: int) -> None:
        if self._queued == 0:
            self._since = self._last = self._clock()  # a fresh backlog: its times start now
            self._drained.clear()
        self._queued += 1
        self._backlog[min(level, self.LEVELS)] += 1

    def taken(self, level: int) -> None:
        self._queued -= 1
        self._backlog[min(level, self.LEVELS)] -= 1
        if self._queued == 0:
            self._drained.set()

    def progressed(self) -> None:
        self._last = self._clock()

    def holds(self, level: int) -> bool:
        """Whether a delivery of `level` on another channel should wait now."""
        now = self._clock()
        if self._queued == 0 or now - self._last >= self.stall_s:
            return False
        if now - self._since >= self.max_hold_s:
            return False
        return any(self._backlog[: min(level, self.LEVELS) + 1])

    async def wait(self) -> None:
        """Until the lead's backlog drains or `stall_s` passes; then ask `holds` again."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.stall_s):
                await self._drained.wait()
