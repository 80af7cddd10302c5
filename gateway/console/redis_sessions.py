"""Console sessions in Redis, shared by every gateway process behind a load balancer: a
session opened on one is valid on all, and a sign-out on one ends it everywhere.

A session is one key, `gw:{deployment}:console:session:{sha256 of its id}` → JSON (client
name, CSRF token, created and last seen), expiring when the session would: the id itself is
never stored, so a dump of Redis holds no usable cookie. The client is looked up by name on
each use, so a client removed from the configuration is signed out with the next restart.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from gateway.clients import Client
from gateway.console.redis_calls import redis_call
from gateway.console.sessions import ABSOLUTE, IDLE, Clock, Session, is_over, new_session
from gateway.redis_link import RedisLink

ClientNamed = Callable[[str], Client | None]


def session_key(link: RedisLink, session_id: str) -> str:
    return link.key("console", "session", hashlib.sha256(session_id.encode()).hexdigest())


class RedisSessions:
    """`Sessions` in Redis; `client_named` maps a stored client name back to its client."""

    def __init__(
        self,
        link: RedisLink,
        clock: Clock,
        client_named: ClientNamed,
        *,
        idle: timedelta = IDLE,
        absolute: timedelta = ABSOLUTE,
    ) -> None:
        self.link = link
        self.clock = clock
        self.client_named = client_named
        self.idle = idle
        self.absolute = absolute

    async def open(self, client: Client) -> Session:
        session = new_session(client, self.clock())
        key, value, ttl = (
            session_key(self.link, session.id),
            _encode(session),
            self._ttl_ms(session),
        )
        await redis_call(lambda: self.link.client.set(key, value, px=ttl), "sessions")
        return session

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = session_key(self.link, session_id)
        raw = await redis_call(lambda: self.link.client.get(key), "sessions")
        session = None if raw is None else self._decode(session_id, raw)
        if session is None:
            return None
        now = self.clock()
        if is_over(session, now, self.idle, self.absolute):
            await redis_call(lambda: self.link.client.delete(key), "sessions")
            return None
        seen = replace(session, seen_at=now)
        value, ttl = _encode(seen), self._ttl_ms(seen)
        # XX: a sign-out elsewhere since the GET stays a sign-out.
        await redis_call(lambda: self.link.client.set(key, value, px=ttl, xx=True), "sessions")
        return seen

    async def close(self, session_id: str | None) -> None:
        if session_id:
            key = session_key(self.link, session_id)
            await redis_call(lambda: self.link.client.delete(key), "sessions")

    def max_age(self, session: Session) -> int:
        return max(0, int((session.created_at + self.absolute - self.clock()).total_seconds()))

    def _ttl_ms(self, session: Session) -> int:
        """Until the session would be over if unused: idle, capped by its absolute end."""
        left = min(session.seen_at + self.idle, session.created_at + self.absolute) - self.clock()
        return max(1, int(left.total_seconds() * 1000))

    def _decode(self, session_id: str, raw: bytes | str) -> Session | None:
        doc = json.loads(raw)
        client = self.client_named(doc["client"])
        if client is None:
            return None
        return Session(
            id=session_id,
            client=client,
            csrf=doc["csrf"],
            created_at=datetime.fromisoformat(doc["created_at"]),
            seen_at=datetime.fromisoformat(doc["seen_at"]),
        )


def _encode(session: Session) -> str:
    return json.dumps(
        {
            "client": session.client.name,
            "csrf": session.csrf,
            "created_at": session.created_at.isoformat(),
            "seen_at": session.seen_at.isoformat(),
        }
    )
