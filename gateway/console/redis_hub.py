"""Live console updates across processes: each process's commits go out on one Redis pub/sub
channel, `gw:{deployment}:console`, and what arrives on it reaches the pages of every process.

A process hands its own changes to its own pages at once (also while Redis is away) and skips
its own messages when Redis echoes them, so each change reaches a page once. Publishing never
waits: a change joins a bounded queue that one task drains to Redis. While Redis is away, or
when the queue is full, changes are dropped; pub/sub keeps nothing for a subscriber that is
away either. Both gaps end in a full refetch: a publisher that dropped changes sends `all`
once Redis answers again, and a process whose subscription is (re)established tells its own
pages that everything may have changed (`Subscription.resync`).

A message is JSON: {"from": process name, "warnings": {id: [stages]}} or {"from": ..., "all": true}.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from functools import partial
from types import TracebackType
from typing import Any, Self

from redis.exceptions import RedisError

from gateway.console.events import Change, InProcessHub, Subscription, changes_of
from gateway.console.redis_calls import once_more
from gateway.ledger import LedgerDraft
from gateway.redis_link import RedisLink

log = logging.getLogger("gateway.console")

MAX_QUEUED = 1000
"""Messages waiting for Redis at most; past that changes are dropped (and `all` sent later)."""
POLL_S = 1.0
"""The listener waits this long for a message before it looks again (below the link's
socket timeout, so an idle channel is not taken for a dead connection)."""
RETRY_INITIAL_S = 0.1
RETRY_MAX_S = 5.0
"""Waits between attempts to reach Redis again double from the first to the last, jittered."""
REDIS_ERRORS = (RedisError, OSError)

Sleep = Callable[[float], Awaitable[None]]


class Backoff:
    """Exponential waits with jitter, from RETRY_INITIAL_S up to RETRY_MAX_S; `reset` after a
    success."""

    def __init__(self) -> None:
        self._next = RETRY_INITIAL_S

    def reset(self) -> None:
        self._next = RETRY_INITIAL_S

    def delay(self) -> float:
        out = random.uniform(self._next / 2, self._next)
        self._next = min(RETRY_MAX_S, self._next * 2)
        return out


class RedisHub:
    """A `Hub` for every process of a deployment, over `link`; an async context manager that
    runs the publishing and listening tasks (enter it before serving pages)."""

    def __init__(self, link: RedisLink, *, sleep: Sleep = asyncio.sleep) -> None:
        self.link = link
        self.channel = link.key("console")
        self._sleep = sleep
        self._local = InProcessHub()
        self._outbox: asyncio.Queue[bytes] = asyncio.Queue(MAX_QUEUED)
        self._dropped = False
        self.subscriptions = 0
        """Times this hub was subscribed to the channel, reconnections included."""
        self._down = {"publish": False, "listen": False}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    def publish(self, changes: Sequence[Change]) -> None:
        if not changes:
            return
        self._local.publish(changes)
        self._send({"warnings": {c.warning_id: sorted(c.stages) for c in changes}})

    def publish_entries(self, entries: Sequence[LedgerDraft]) -> None:
        """A `CommitListener`: what a transaction committed, published."""
        self.publish(changes_of(entries))

    def subscribe(self) -> AbstractAsyncContextManager[Subscription]:
        return self._local.subscribe()

    def close(self) -> None:
        self._local.close()

    def _send(self, body: dict[str, Any]) -> None:
        try:
            self._outbox.put_nowait(json.dumps({"from": self.link.name, **body}).encode())
        except asyncio.QueueFull:
            self._dropped = True

    async def _publish_forever(self) -> None:
        backoff = Backoff()
        everything = json.dumps({"from": self.link.name, "all": True}).encode()
        while not self._stopping:
            if self._dropped:
                self._dropped = False
                message = everything
            else:
                message = await self._outbox.get()
            try:
                await once_more(partial(self.link.client.publish, self.channel, message))
            except REDIS_ERRORS as exc:
                self._dropped = True
                while not self._outbox.empty():
                    self._outbox.get_nowait()
                self._lost("publish", exc)
                await self._sleep(backoff.delay())
                continue
            self._back("publish")
            backoff.reset()

    async def _listen_forever(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                await self._listen(backoff)
            except REDIS_ERRORS as exc:
                self._lost("listen", exc)
                await self._sleep(backoff.delay())

    async def _listen(self, backoff: Backoff) -> None:
        pubsub = self.link.client.pubsub()
        try:
            await pubsub.subscribe(self.channel)
            while not self._stopping:
                message = await pubsub.get_message(timeout=POLL_S)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    # Also after redis-py reconnected by itself: whatever came meanwhile is lost.
                    self._back("listen")
                    backoff.reset()
                    self.subscriptions += 1
                    self._local.resync()
                elif message["type"] == "message":
                    self._receive(message["data"])
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py

    def _receive(self, data: bytes) -> None:
        try:
            doc = json.loads(data)
            if doc["from"] == self.link.name:
                return
            if doc.get("all") is True:
                self._local.resync()
                return
            changes = [
                Change(str(wid), frozenset(str(s) for s in stages))
                for wid, stages in doc["warnings"].items()
            ]
        except (ValueError, KeyError, TypeError, AttributeError):
            log.debug("console: a malformed message on %s ignored", self.channel)
            return
        self._local.publish(changes)

    def _lost(self, what: str, exc: BaseException) -> None:
        if not self._down[what]:
            self._down[what] = True
            log.warning(
                "console: Redis unreachable (%s: %s); live updates between processes pause "
                "until it is back",
                what,
                exc,
            )

    def _back(self, what: str) -> None:
        if self._down[what]:
            self._down[what] = False
            log.info("console: Redis reachable again (%s)", what)

    async def __aenter__(self) -> Self:
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="console-hub-listen"),
            asyncio.create_task(self._publish_forever(), name="console-hub-publish"),
        ]
        for task in self._tasks:
            task.add_done_callback(_report_crash)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._local.close()
        self._stopping = True  # redis-py may swallow a cancellation: the loops look here too
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("console: %s stopped", task.get_name(), exc_info=task.exception())
