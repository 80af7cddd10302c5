"""The operator console: sign-in sessions, live pages (SSE) and their HTML."""

from __future__ import annotations

from aiohttp import web

from gateway.console.events import InProcessHub
from gateway.console.routes import HUB, SESSIONS, add_console_routes
from gateway.console.sessions import Clock, SessionBook

__all__ = ["HUB", "SESSIONS", "add_console"]


def add_console(app: web.Application, clock: Clock) -> InProcessHub:
    """Mount the console on `app`; the hub to publish the store's commits to."""
    hub = InProcessHub()
    app[HUB] = hub
    app[SESSIONS] = SessionBook(clock)
    add_console_routes(app)
    return hub
