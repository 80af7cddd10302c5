"""The circuit breaker of endpoints: when to stop trying one, and when to try it again."""

from __future__ import annotations

import time
from collections.abc import Callable

Monotonic = Callable[[], float]


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
