"""The sweeper: PostgreSQL is the truth, Redis only a queue. One process at a time (a lease
in Redis, `sweeper`) compares the pending deliveries in the store with the queue's `live` set
every `sweep_s`, and queues again each one that had no live entry at two sweeps in a row (a
delivery between its commit and its first XADD is not queued twice). So a Redis that lost its
data (restarted without persistence, failed over to a replica that lagged) loses no delivery.
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Self

from redis.exceptions import RedisError

from gateway.coord.streams import Streams
from gateway.exceptions import StoreUnavailable
from gateway.redis_link import stop_tasks
from gateway.store import Store

log = logging.getLogger("gateway.coord")

# Take the lease, or renew it when this process holds it.
_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
elseif holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class Sweeper:
    """An async context manager running the sweep loop."""

    def __init__(self, streams: Streams, store: Store, *, sweep_s: float) -> None:
        self.streams = streams
        self.store = store
        self.sweep_s = sweep_s
        self.lease = streams.link.key("sweeper")
        self._lease = streams.client.register_script(_LEASE)
        self._missing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop(), name="coord sweeper")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._task is not None:
            await stop_tasks([self._task])

    async def _loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.sweep_s)
            try:
                await self.sweep()
            except (RedisError, StoreUnavailable, OSError) as exc:
                log.warning("sweep skipped: %s", exc)
            except Exception:
                log.exception("sweep failed")

    async def sweep(self) -> int:
        """One sweep if this process holds the lease; how many deliveries it queued again."""
        ttl_ms = int(self.sweep_s * 3000)
        if not await self._lease(keys=[self.lease], args=[self.streams.link.name, ttl_ms]):
            self._missing = set()  # another process sweeps; start afresh if this one takes over
            return 0
        pending = await self.store.pending_keys()
        missing = await self.streams.missing([p[0] for p in pending])
        again = [p for p in pending if p[0] in missing and p[0] in self._missing]
        self._missing = missing - {p[0] for p in again}
        if again:
            await self.streams.streams_ready()
            await self.streams.push(again)
            log.warning("queued again %d pending deliveries missing from Redis", len(again))
        return len(again)
