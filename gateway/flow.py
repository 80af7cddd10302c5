"""Flow control for the dispatcher: a rate limiter, a circuit breaker, per-endpoint slots and
the lead gate."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

Sleep = Callable[[float], Awaitable[None]]
_EPSILON = 1e-9
Monotonic = Callable[[], float]
T = TypeVar("T")

DEFAULT_PER_ENDPOINT = 4
"""Sends to one endpoint in flight at most (design.md: a hanging endpoint holds few workers)."""


class Pacer(Protocol):
    """What paces a channel's sends: `acquire` returns when the next one may go."""

    async def acquire(self) -> None: ...


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
    """Per-endpoint: after `threshold` consecutive failures the circuit opens for `cooldown`
    seconds, so a dead endpoint does not tie up the channel's workers; then it half-opens:
    one trial is admitted, and its success closes the circuit, its failure opens it again."""

    def __init__(self, threshold: int, cooldown: float, *, clock: Monotonic = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._trial: set[str] = set()
        self.listener: Callable[[str, float | None], None] | None = None
        """Told of each circuit this breaker opened (endpoint, cooldown) or closed (endpoint,
        None), so other processes can follow (`follow`)."""

    def follow(self, endpoint_id: str, cooldown: float | None) -> None:
        """Another process opened (for `cooldown` seconds) or closed `endpoint_id`'s circuit."""
        if cooldown is None:
            self._failures.pop(endpoint_id, None)
            self._open_until.pop(endpoint_id, None)
            self._trial.discard(endpoint_id)
        elif endpoint_id not in self._trial:
            self._open_until[endpoint_id] = self._clock() + cooldown

    def delay(self, endpoint_id: str) -> float:
        """Seconds left of `endpoint_id`'s open circuit; 0 when closed or half-open."""
        until = self._open_until.get(endpoint_id)
        return max(0.0, until - self._clock()) if until is not None else 0.0

    def admit(self, endpoint_id: str) -> float:
        """0 when an attempt at `endpoint_id` may go now (in a half-open circuit it becomes
        the one trial); else seconds to wait (a trial in flight: a full cooldown, as its
        outcome wakes the waiting ones anyway)."""
        if endpoint_id not in self._open_until:
            return 0.0
        left = self.delay(endpoint_id)
        if left > 0:
            return left
        if endpoint_id in self._trial:
            return self.cooldown
        self._trial.add(endpoint_id)
        return 0.0

    def in_trial(self, endpoint_id: str) -> bool:
        """Whether a half-open circuit's one trial is under way."""
        return endpoint_id in self._trial

    def release(self, endpoint_id: str) -> None:
        """A trial ended with neither verdict (stopped, a permanent error): admit another."""
        self._trial.discard(endpoint_id)

    def open_ids(self) -> list[str]:
        """Endpoints whose circuit is open or half-open."""
        return list(self._open_until)

    def is_open(self, endpoint_id: str) -> bool:
        return self.delay(endpoint_id) > 0

    def success(self, endpoint_id: str) -> None:
        self._failures.pop(endpoint_id, None)
        was_open = self._open_until.pop(endpoint_id, None) is not None
        self._trial.discard(endpoint_id)
        if was_open and self.listener is not None:
            self.listener(endpoint_id, None)

    def failure(self, endpoint_id: str) -> None:
        n = self._failures.get(endpoint_id, 0) + 1
        self._failures[endpoint_id] = n
        if n >= self.threshold or endpoint_id in self._trial:
            self._open_until[endpoint_id] = self._clock() + self.cooldown
            self._trial.discard(endpoint_id)
            if self.listener is not None:
                self.listener(endpoint_id, self.cooldown)


class EndpointSlots(Generic[T]):
    """At most `limit` items in flight per endpoint; the others are parked, most urgent
    (lowest rank) first, and handed back one by one as slots free up."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._busy: dict[str, int] = {}
        self._parked: dict[str, list[tuple[int, int, T]]] = {}
        self._order = itertools.count()

    def take(self, endpoint_id: str, item: T, rank: int) -> bool:
        """True when `item` may go now (it holds a slot until `give`); else it is parked."""
        busy = self._busy.get(endpoint_id, 0)
        if busy < self.limit:
            self._busy[endpoint_id] = busy + 1
            return True
        heapq.heappush(self._parked.setdefault(endpoint_id, []), (rank, next(self._order), item))
        return False

    def give(self, endpoint_id: str) -> T | None:
        """Free a slot of `endpoint_id`; the parked item to try again, if any."""
        busy = self._busy.get(endpoint_id, 0) - 1
        if busy > 0:
            self._busy[endpoint_id] = busy
        else:
            self._busy.pop(endpoint_id, None)
        parked = self._parked.get(endpoint_id)
        if not parked:
            return None
        *_, item = heapq.heappop(parked)
        if not parked:
            del self._parked[endpoint_id]
        return item

    def parked(self) -> int:
        return sum(len(p) for p in self._parked.values())


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
