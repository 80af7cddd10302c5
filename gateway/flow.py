"""Flow control for the dispatcher: per-endpoint slots and the lead gate (the rate limiter and
the circuit breaker are policies: `gateway.policies.rate`, `gateway.policies.breaker`)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Monotonic = Callable[[], float]
T = TypeVar("T")

DEFAULT_PER_ENDPOINT = 4
"""Sends to one endpoint in flight at most (design.md: a hanging endpoint holds few workers)."""


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
