"""A bound on guessing console tokens: after MAX_FAILURES wrong tokens from one address within
WINDOW, that address gets 429 (with Retry-After) for every sign-in until the window ends.

The window opens at an address's first failure and closes WINDOW later. The address is the
last hop of X-Forwarded-For, as the proxy in front of the gateway appends it (README "Behind a
TLS-terminating proxy"), or else the connection's peer: behind a proxy every peer is the proxy,
and one guesser must not lock the duty room out. `SignInLimit` is the extension point:
`MemorySignInLimit` counts in this process (SQLite, one process), `RedisSignInLimit` in Redis,
so the gateways behind a load balancer share one count.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiohttp import web

from gateway.console.redis_calls import redis_call
from gateway.console.sessions import Clock
from gateway.redis_link import RedisLink

MAX_FAILURES = 10
WINDOW = timedelta(minutes=1)
MAX_ADDRESSES = 10_000
"""Addresses a process remembers at most; the oldest windows go first."""


def address_of(request: web.Request) -> str:
    """The address sign-in failures of `request` count against."""
    forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
    try:
        return str(ipaddress.ip_address(forwarded.rsplit(",", 1)[-1].strip()))
    except ValueError:
        return request.remote or ""


class SignInLimit(Protocol):
    """Counts failed sign-ins per client address."""

    async def blocked(self, address: str) -> int | None:
        """Seconds until `address` may try again, or None when it may now."""
        ...

    async def failed(self, address: str) -> None:
        """Count one wrong token from `address`."""
        ...


class MemorySignInLimit:
    """`SignInLimit` in this process's memory, timed by `clock`."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._windows: dict[str, tuple[datetime, int]] = {}

    async def blocked(self, address: str) -> int | None:
        found = self._windows.get(address)
        if found is None:
            return None
        left = (found[0] + WINDOW - self.clock()).total_seconds()
        if left <= 0:
            del self._windows[address]
            return None
        return math.ceil(left) if found[1] >= MAX_FAILURES else None

    async def failed(self, address: str) -> None:
        now = self.clock()
        started, count = self._windows.pop(address, (now, 0))
        if now - started >= WINDOW:
            started, count = now, 0
        while len(self._windows) >= MAX_ADDRESSES:
            del self._windows[next(iter(self._windows))]
        self._windows[address] = (started, count + 1)


class RedisSignInLimit:
    """`SignInLimit` in Redis: a counter per address that expires WINDOW after its first
    failure. ConsoleUnavailable when Redis cannot answer."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link

    def _key(self, address: str) -> str:
        return self.link.key("console", "sign-in-failures", address)

    async def blocked(self, address: str) -> int | None:
        count, ttl_ms = await redis_call(lambda: self._read(self._key(address)), "sign-ins")
        if count is None or int(count) < MAX_FAILURES or int(ttl_ms) <= 0:
            return None
        return math.ceil(int(ttl_ms) / 1000)

    async def failed(self, address: str) -> None:
        await redis_call(lambda: self._count(self._key(address)), "sign-ins")

    async def _read(self, key: str) -> list[Any]:
        async with self.link.client.pipeline(transaction=False) as pipe:
            pipe.get(key)
            pipe.pttl(key)
            return await pipe.execute()

    async def _count(self, key: str) -> None:
        async with self.link.client.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.pexpire(key, int(WINDOW.total_seconds() * 1000), nx=True)
            await pipe.execute()
