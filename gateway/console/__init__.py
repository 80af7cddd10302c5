"""The operator console: sign-in sessions, live pages (SSE) and their HTML."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web

from gateway.console.events import InProcessHub
from gateway.console.redis_hub import RedisHub
from gateway.console.redis_sessions import RedisSessions
from gateway.console.routes import HUB, SESSIONS, SIGN_IN_LIMIT, add_console_routes
from gateway.console.sessions import Clock, SessionBook
from gateway.console.sign_in_limit import MemorySignInLimit, RedisSignInLimit
from gateway.redis_link import RedisLink
from gateway.web.guard import AUTH

__all__ = ["HUB", "SESSIONS", "SIGN_IN_LIMIT", "add_console", "share_console"]


def add_console(app: web.Application, clock: Clock) -> InProcessHub:
    """Mount the console on `app`, for one process: sessions, sign-in limits and live updates
    in memory. The hub to publish the store's commits to (also `app[HUB]`)."""
    hub = InProcessHub()
    app[HUB] = hub
    app[SESSIONS] = SessionBook(clock)
    app[SIGN_IN_LIMIT] = MemorySignInLimit(clock)
    add_console_routes(app)
    return hub


@asynccontextmanager
async def share_console(
    app: web.Application, link: RedisLink, clock: Clock
) -> AsyncIterator[RedisHub]:
    """Make the console of `app` (mounted by `add_console`) one with every process of `link`'s
    deployment: sessions, sign-in limits and live updates in Redis. Enter it in the app's
    `cleanup_ctx` before the store's commits are published to `app[HUB]`."""
    async with RedisHub(link) as hub:
        app[HUB] = hub
        app[SESSIONS] = RedisSessions(link, clock, app[AUTH].named)
        app[SIGN_IN_LIMIT] = RedisSignInLimit(link)
        yield hub
