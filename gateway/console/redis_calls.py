"""The console's calls to Redis: one more try on a broken connection, and one error for the
routes to answer (ConsoleUnavailable, 503)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from gateway.exceptions import ConsoleUnavailable

T = TypeVar("T")


async def once_more(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, made again once if its connection fails: a pooled connection that a restarted
    Redis closed fails at once, a fresh one then succeeds. Only for calls that may be made
    twice."""
    try:
        return await call()
    except RedisConnectionError:
        return await call()


async def redis_call(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`once_more(call)`; ConsoleUnavailable naming `what` when Redis cannot answer."""
    try:
        return await once_more(call)
    except RedisError as exc:
        raise ConsoleUnavailable(f"console {what} are unavailable (Redis)") from exc
