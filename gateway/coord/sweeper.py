"""The sweeper: PostgreSQL is the truth, Redis only a queue. One process at a time (a lease
in Redis, `sweeper`) compares the pending deliveries in the store with the queue's `live` set
every `sweep_s`, and queues again each one that had no live entry at two sweeps in a row (a
delivery between its commit and its first XADD is not queued twice). So a Redis that lost its
data (restarted without persistence, failed over to a replica that lagged) loses no delivery.

The same process removes from the consumer groups the consumers of processes that died (each
restart leaves one per stream otherwise): those that hold no entry (a dead process's entries
are taken over first, after `claim_idle_s`), idle for over DEAD_AFTER_CLAIMS * claim_idle_s,
with no heartbeat in that time either.
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from gateway.coord.control import LIVE_S, Control
from gateway.coord.streams import Streams
from gateway.exceptions import StoreUnavailable
from gateway.redis_link import stop_tasks
from gateway.service import Service
from gateway.store import Store

log = logging.getLogger("gateway.coord")

DEAD_AFTER_CLAIMS = 3
"""A consumer silent for this many claim_idle_s (LIVE_S at least) is a dead process's. A live
process reads each stream it has room for every READ_BLOCK_MS (1 s), renews its claims every
claim_idle_s / 3 and heartbeats every HEARTBEAT_S (1 s); one silent for claim_idle_s has lost
its claims already. Before Redis 7.2 `idle` also grows while reads find nothing: the heartbeat
covers that, and the bound stays under the 10 * claim_idle_s its heartbeats are kept. A consumer
removed wrongly loses nothing: it holds no entry, and its next read creates it again."""

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


class Sweeper(Service):
    """An async context manager running the sweep loop."""

    def __init__(
        self,
        streams: Streams,
        store: Store,
        control: Control,
        *,
        sweep_s: float,
        claim_idle_s: float,
    ) -> None:
        self.streams = streams
        self.store = store
        self.control = control
        self.sweep_s = sweep_s
        self.dead_after_s = max(DEAD_AFTER_CLAIMS * claim_idle_s, LIVE_S)
        self.lease = streams.link.key("sweeper")
        self._lease = streams.client.register_script(_LEASE)
        self._missing: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="coord sweeper")

    async def close(self) -> None:
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
        """One sweep if this process holds the lease (queue again what Redis lost, remove dead
        consumers); how many deliveries it queued again."""
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
        await self.remove_dead()
        return len(again)

    async def remove_dead(self) -> None:
        """Remove the consumers of processes silent for `dead_after_s` that hold no entry."""
        live = await self.control.heard_within(self.dead_after_s)
        removed = await self.streams.remove_dead(int(self.dead_after_s * 1000), live)
        for name, streams in sorted(removed.items()):
            log.info(
                "removed consumer %s (silent over %.0fs) from %d streams",
                name,
                self.dead_after_s,
                len(streams),
            )
