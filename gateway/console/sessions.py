"""Console sessions: a random id in an HttpOnly, SameSite=Strict cookie stands for a client
signed in with its token (the token itself never goes into the cookie), with a CSRF token of
its own for the forms that write.

Sessions live in this process's memory: a restart signs everyone out, and behind a load
balancer each process knows only its own sessions (sticky sessions, or a shared store later).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

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


class SessionBook:
    """The sessions of this process."""

    def __init__(self, clock: Clock, *, idle: timedelta = IDLE, absolute: timedelta = ABSOLUTE):
        self.clock = clock
        self.idle = idle
        self.absolute = absolute
        self._sessions: dict[str, Session] = {}

    def open(self, client: Client) -> Session:
        now = self.clock()
        self._sweep(now)
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        session = Session(
            id=secrets.token_urlsafe(_ID_BYTES),
            client=client,
            csrf=secrets.token_urlsafe(_ID_BYTES),
            created_at=now,
            seen_at=now,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
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

    def close(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)

    def max_age(self, session: Session) -> int:
        """Seconds the cookie may live: until the absolute end of the session."""
        return max(0, int((session.created_at + self.absolute - self.clock()).total_seconds()))

    def _over(self, session: Session, now: datetime) -> bool:
        return now - session.seen_at >= self.idle or now - session.created_at >= self.absolute

    def _sweep(self, now: datetime) -> None:
        for sid in [sid for sid, s in self._sessions.items() if self._over(s, now)]:
            del self._sessions[sid]

    def __len__(self) -> int:
        return len(self._sessions)
