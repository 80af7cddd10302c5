"""One timer per key, on an injected clock and sleep: what expiry (lifecycle) and coverage
deadlines (coverage) both wait with. A test drives time by injecting both."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]


class Timers:
    """`at(key, when, action)` runs `action()` once `clock()` reaches `when` (at once when it
    has), unless cancelled; one timer per key. `close` cancels every timer and waits for them.
    An action's exception is its own to log: it ends only that timer."""

    def __init__(self, name: str, *, clock: Clock, sleep: Sleep = asyncio.sleep) -> None:
        self.name = name
        self.clock = clock
        self.sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def at(self, key: str, when: datetime, action: Callable[[], Awaitable[None]]) -> bool:
        """Schedule `action` at `when` for `key`; False (nothing done) when `key` has a timer."""
        if key in self._tasks:
            return False
        task = asyncio.create_task(self._run(when, action), name=f"{self.name} {key}")
        self._tasks[key] = task
        task.add_done_callback(lambda done: self._done(key, done))
        return True

    def has(self, key: str) -> bool:
        return key in self._tasks

    def cancel(self, key: str) -> None:
        """Cancel the timer of `key`, unless it is the caller itself (an action may end its own
        key's timer: it then runs to its end)."""
        task = self._tasks.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, when: datetime, action: Callable[[], Awaitable[None]]) -> None:
        delay = (when - self.clock()).total_seconds()
        if delay > 0:
            await self.sleep(delay)
        await action()

    def _done(self, key: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
