"""Control messages between the processes of a deployment, over one Redis pub/sub channel,
and the roll of live processes.

Each process writes a heartbeat to the sorted set `members` every `HEARTBEAT_S`; a process
whose heartbeat is older than `LIVE_S` is not live. Messages (JSON, with the sender's name):

- `stop` {warning, req}: the warning was superseded, cancelled or expired; each other live
  process stops its deliveries (queued, waiting or in flight) and then pushes its name to the
  list `acks:{req}`, so the sender can return once every live process has stopped
  (`stop_everywhere`, bounded by `STOP_WAIT_S`).
- `watch` {warning}: a warning was accepted; every process watches its expiry and coverage
  deadline, so each happens even if the accepting process dies (the store makes them once).
- `circuit` {endpoint, open, cooldown}: an endpoint's circuit opened or closed.
- `disable` {endpoint, reason}: a partner answered 410.

Pub/sub drops what a disconnected process misses: each use has a backstop that does not
depend on it (the store's states for stops and watches, the store's disabled endpoints).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from redis.exceptions import RedisError

from gateway.redis_link import RedisLink, stop_tasks
from gateway.service import Service

log = logging.getLogger("gateway.coord")

HEARTBEAT_S = 1.0
LIVE_S = 3 * HEARTBEAT_S
"""A process silent this long is not waited for by a stop (its claims are taken over only
after claim_idle_s: a pause is not death, but a stop must not wait on one)."""
STOP_WAIT_S = 2.0
"""How long a stop waits for the other processes' word that they stopped."""
ACKS_KEPT_S = 60
RECONNECT_MAX_S = 5.0
POLL_S = 1.0

Handler = Callable[[Mapping[str, Any]], Awaitable[None]]


class Control(Service):
    """Heartbeats, the control channel's listener, and sending messages; an async context
    manager. `handlers` maps an op to the coroutine that applies another process's message."""

    def __init__(self, link: RedisLink, claim_idle_s: float) -> None:
        self.link = link
        self.claim_idle_s = claim_idle_s
        self.channel = link.key("control")
        self.members = link.key("members")
        self.handlers: dict[str, Handler] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._down = False
        self._closing = False

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="coord heartbeat"),
            asyncio.create_task(self._listen(), name="coord control"),
        ]

    async def close(self) -> None:
        self._closing = True
        await stop_tasks(self._tasks)
        with contextlib.suppress(RedisError, OSError):
            await self.link.client.zrem(self.members, self.link.name)

    async def live(self) -> set[str]:
        """The names of the processes whose heartbeat is recent, this one included."""
        return await self.heard_within(LIVE_S)

    async def heard_within(self, seconds: float) -> set[str]:
        """The names of the processes with a heartbeat in the last `seconds` (kept for
        10 * claim_idle_s), this one included."""
        since = (time.time() - seconds) * 1000
        names = await self.link.client.zrangebyscore(self.members, since, "+inf")
        return {n.decode() if isinstance(n, bytes) else str(n) for n in names}

    async def send(self, op: str, **data: Any) -> None:
        """Publish a message to the other processes (raises RedisError when Redis fails)."""
        body = json.dumps({"op": op, "from": self.link.name, **data}, ensure_ascii=False)
        await self.link.client.publish(self.channel, body)

    async def stop_everywhere(self, warning_id: str) -> None:
        """Tell every other live process to stop `warning_id`'s deliveries; return once each
        said it did, or after STOP_WAIT_S (a process that cannot hear is stopped by its
        backstop: it finds the warning retired in the store)."""
        try:
            others = await self.live() - {self.link.name}
            if not others:
                return
            req = uuid.uuid4().hex
            await self.send("stop", warning=warning_id, req=req)
            acks, heard = self.link.key("acks", req), set[str]()
            deadline = time.monotonic() + STOP_WAIT_S
            while not others <= heard:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning(
                        "stop of %s: no word from %s", warning_id, ", ".join(sorted(others - heard))
                    )
                    return
                got = await self.link.client.blpop([acks], timeout=max(left, 0.01))
                if got is not None:
                    name = got[1]
                    heard.add(name.decode() if isinstance(name, bytes) else str(name))
        except RedisError as exc:
            log.warning("stop of %s not sent to the other gateways: %s", warning_id, exc)

    async def _heartbeat(self) -> None:
        while not self._closing:
            try:
                now = time.time()
                async with self.link.client.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.members, {self.link.name: now * 1000})
                    pipe.zremrangebyscore(
                        self.members, "-inf", (now - 10 * self.claim_idle_s) * 1000
                    )
                    await pipe.execute()
                self._up()
            except RedisError as exc:
                self._lost(exc)
            await asyncio.sleep(HEARTBEAT_S)

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._closing:
            pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._up()
                backoff = 0.1
                # Polled, not `listen()`: a read that blocks until a message comes would keep a
                # task alive past its close when redis-py swallows the cancellation.
                while not self._closing:
                    message = await pubsub.get_message(timeout=POLL_S)
                    if message is not None and message.get("type") == "message":
                        await self._apply(message["data"])
            except RedisError as exc:
                self._lost(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(backoff)
            backoff = min(RECONNECT_MAX_S, backoff * 2)

    async def _apply(self, raw: bytes) -> None:
        try:
            message = json.loads(raw)
            op, sender = message["op"], message["from"]
        except (ValueError, KeyError, TypeError):
            log.warning("a malformed control message was dropped")
            return
        if sender == self.link.name:
            return
        handler = self.handlers.get(op)
        if handler is None:
            return
        try:
            await handler(message)
        except Exception:
            log.exception("control message %s failed", op)
            return
        if op == "stop" and isinstance(message.get("req"), str):
            acks = self.link.key("acks", message["req"])
            try:
                async with self.link.client.pipeline(transaction=False) as pipe:
                    pipe.rpush(acks, self.link.name)
                    pipe.expire(acks, ACKS_KEPT_S)
                    await pipe.execute()
            except RedisError as exc:
                self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        if not self._down:
            log.error("Redis is unreachable (%s); retrying", exc)
        self._down = True

    def _up(self) -> None:
        if self._down:
            log.info("Redis is reachable again")
        self._down = False
