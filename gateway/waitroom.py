"""Deliveries waiting out a retry backoff or an open circuit, outside every queue.

Waiters are grouped by what they wait for: a channel's shared transport (one MQTT broker, one
SMTP server) or one endpoint (a partner's server). `wake(key)` releases a group at once: the
dispatcher calls it when a send through that transport or endpoint succeeds, and when a channel
reports its connection is back. So nobody waits out a long backoff after the far side has
recovered, each group has a probe: its most urgent waiter (`rank`, lowest first) is released
after at most `probe_s`, one trial whose success wakes the rest, and probes go on every
`probe_s` while the group is not empty (a trial may end without waiting again). A group thus
tries about one delivery per `probe_s` while the far side is down, and all of them moments
after its return.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger("gateway.waitroom")

T = TypeVar("T", bound=Hashable)
Sleep = Callable[[float], Awaitable[None]]

DEFAULT_PROBE_S = 2.0
"""How long a group waits at most before one of its deliveries tries again."""


class WaitRoom(Generic[T]):
    """Timers that hand waiters back to `release`; see the module docstring."""

    def __init__(
        self,
        release: Callable[[T], None],
        *,
        rank: Callable[[T], int] = lambda _: 0,
        sleep: Sleep = asyncio.sleep,
        probe_s: float = DEFAULT_PROBE_S,
    ) -> None:
        self._release = release
        self._rank = rank
        self._sleep = sleep
        self.probe_s = probe_s
        self._groups: dict[Hashable, dict[T, asyncio.Task[None]]] = {}
        self._probes: dict[Hashable, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return sum(len(g) for g in self._groups.values())

    def wait(self, key: Hashable, item: T, seconds: float) -> None:
        """Release `item` after `seconds`, or earlier when its group `key` is woken or probed."""
        group = self._groups.setdefault(key, {})
        old = group.pop(item, None)
        if old is not None:
            old.cancel()
        group[item] = asyncio.create_task(self._after(key, item, seconds), name=f"wait {item}")
        if seconds > self.probe_s and key not in self._probes:
            self._probes[key] = asyncio.create_task(self._probe(key), name=f"probe {key}")

    def wake(self, key: Hashable) -> int:
        """Release every waiter of `key` now; how many were released."""
        probe = self._probes.pop(key, None)
        if probe is not None:
            probe.cancel()
        group = self._groups.pop(key, {})
        for item, timer in group.items():
            timer.cancel()
            self._release(item)
        return len(group)

    def discard(self, key: Hashable, item: T) -> None:
        """Forget `item` (waiting in group `key`) without releasing it; no-op if it is not there."""
        group = self._groups.get(key)
        timer = group.pop(item, None) if group is not None else None
        if timer is None:
            return
        timer.cancel()
        if not group:
            self._end_group(key)

    def close(self) -> None:
        """Cancel every timer; the waiters are not released."""
        for task in [
            *self._probes.values(),
            *(t for g in self._groups.values() for t in g.values()),
        ]:
            task.cancel()
        self._probes.clear()
        self._groups.clear()

    async def _after(self, key: Hashable, item: T, seconds: float) -> None:
        await self._sleep(seconds)
        group = self._groups.get(key)
        if group is not None and group.get(item) is asyncio.current_task():
            del group[item]
            if not group:
                self._end_group(key)
            self._release(item)

    async def _probe(self, key: Hashable) -> None:
        await self._sleep(self.probe_s)
        self._probes.pop(key, None)
        group = self._groups.get(key)
        if not group:
            return
        # The most urgent waiter tries first; among equals the one waiting longest.
        item = min(group, key=self._rank)
        group.pop(item).cancel()
        if not group:
            self._end_group(key)
        else:
            # The trial may never wait again (stopped meanwhile, a permanent error): keep
            # probing the others, or they would wait out their backoff after the far side is back.
            self._probes[key] = asyncio.create_task(self._probe(key), name=f"probe {key}")
        self._release(item)

    def _end_group(self, key: Hashable) -> None:
        self._groups.pop(key, None)
        probe = self._probes.pop(key, None)
        if probe is not None and probe is not asyncio.current_task():
            probe.cancel()
