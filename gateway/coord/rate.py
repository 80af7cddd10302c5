"""A channel's rate limit shared by every process of a deployment: one schedule in Redis
(GCRA: the key holds the theoretical arrival time of the next send), so two gateways together
send no faster than `rate_per_s`. When Redis fails, each process paces itself alone at the
full rate until it answers again (the limit may then be passed; deliveries never wait on it).
"""

from __future__ import annotations

import asyncio
import logging

from redis.exceptions import RedisError

from gateway.policies.rate import RateLimiter
from gateway.redis_link import RedisLink

log = logging.getLogger("gateway.coord")

# KEYS[1]: the schedule; ARGV[1]: µs between sends; ARGV[2]: µs of burst allowed.
# Returns 0 when a send may go now (and books it), else the µs to wait before asking again.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - now - tonumber(ARGV[2])
if wait > 0 then return wait end
redis.call('SET', KEYS[1], tat + interval, 'PX', math.ceil((tat + interval - now) / 1000) + 1000)
return 0
"""


class SharedRate:
    """`Pacer` of one channel across processes."""

    def __init__(self, link: RedisLink, channel: str, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.key = link.key("rate", channel)
        self.interval_us = max(1, round(1_000_000 / rate))
        self.burst_us = self.interval_us * max(1, round(rate / 10))
        self._script = link.client.register_script(_GCRA)
        self._alone = RateLimiter(rate)
        self._down = False

    async def acquire(self) -> None:
        while True:
            try:
                wait_us = int(
                    await self._script(keys=[self.key], args=[self.interval_us, self.burst_us])
                )
            except RedisError as exc:
                if not self._down:
                    log.error("shared rate limit unreachable (%s); pacing alone", exc)
                self._down = True
                await self._alone.acquire()
                return
            self._down = False
            if wait_us <= 0:
                return
            await asyncio.sleep(wait_us / 1_000_000)
