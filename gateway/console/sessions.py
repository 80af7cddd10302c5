"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie stands for a client
signed in with its token (the token itself never goes into the cookie), with a CSRF token of
its own for the forms that write.

`Sessions` is the extension point: `SessionBook` keeps them in this process's memory (one
process, the SQLite store: a restart signs everyone out); `RedisSessions` (redis_sessions.py)
shares them between the processes behind a load balancer.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Protocol

from gateway.clients import Client

COOKIE = "gw_console"
COOKIE_PATH = "/console"
IDLE = timedelta(hours=8)
"""A session unused this long is over (a duty shift)."""
ABSOLUTE = timedelta(hours=12)
"""No session lasts longer than this, however busy."""
MAX_SESSIONS = 1000
"""Sessions kept at most; the oldest go first (a flood of sign-ins cannot exhaust memory)."""
_ID_BYTES = 32

Clock = Callable[[], datetime]


@dataclass(frozen=True)
class Session:
    id: str
    client: Client
    csrf: str
    created_at: datetime
    seen_at: datetime

    def csrf_ok(self, token: str | None) -> bool:
        """Whether a form's CSRF token is this session's (constant time)."""
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


def new_session(client: Client, now: datetime) -> Session:
    """A session of `client` opened `now`, with a fresh random id and CSRF token."""
    return Session(
        id=secrets.token_urlsafe(_ID_BYTES),
        client=client,
        csrf=secrets.token_urlsafe(_ID_BYTES),
        created_at=now,
        seen_at=now,
    )


def is_over(session: Session, now: datetime, idle: timedelta, absolute: timedelta) -> bool:
    """Whether `session` has been idle for `idle`, or has lasted `absolute`, at `now`."""
    return now - session.seen_at >= idle or now - session.created_at >= absolute


class Sessions(Protocol):
    """Where sessions live. `get` restarts the idle timer of a live session; a session idle
    for `idle` or older than `absolute` (by `clock`) is over, as after `close` (sign-out), in
    every process that shares the store. A shared store that cannot answer raises
    ConsoleUnavailable (503)."""

    clock: Clock

    async def open(self, client: Client) -> Session: ...

    async def get(self, session_id: str | None) -> Session | None: ...

    async def close(self, session_id: str | None) -> None: ...

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: until the absolute end of the session."""
        ...


class SessionBook:
    """`Sessions` in this process's memory."""

    def __init__(self, clock: Clock, *, idle: timedelta = IDLE, absolute: timedelta = ABSOLUTE):
        self.clock = clock
        self.idle = idle
        self.absolute = absolute
        self._sessions: dict[str, Session] = {}

    async def open(self, client: Client) -> Session:
        now = self.clock()
        self._sweep(now)
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = new_session(client, now)
        self._sessions[session.id] = session
        return session

    async def get(self, session_id: str | None) -> Session | None:
        """The live session of that id, its idle timer restarted; None when unknown or over."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if self._over(session, now):
            del self._sessions[session_id]
            return None
        session = replace(session, seen_at=now)
        self._sessions[session_id] = session
        return session

    async def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: until the absolute end of the session."""
        return max(0, int((session.created_at + self.absolute - self.clock()).total_seconds()))

    def _over(self, session: Session, now: datetime) -> bool:
        return is_over(session, now, self.idle, self.absolute)

    def _sweep(self, now: datetime) -> None:
        for sid in [sid for sid, s in self._sessions.items() if self._over(s, now)]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)
