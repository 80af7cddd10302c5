"""One process's link to the coordinating Redis: a client and the key namespace of its
deployment.

Every key and channel of a deployment lives under one namespace, `gw:{deployment}`, where the
deployment is the identity of the PostgreSQL database the processes share (written there by
`gateway db upgrade`): gateways on one database coordinate whatever URL they reach Redis by,
and gateways of other databases on the same Redis never see each other's keys.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Collection

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as ConnectionLost
from redis.exceptions import TimeoutError as NoAnswer

from gateway.service import Service

log = logging.getLogger("gateway.coord")

SOCKET_TIMEOUT_S = 5.0
RETRIES = 2
"""A Redis call that gets no answer within this fails (and is retried by its caller)."""
MAX_CONNECTIONS = 100
"""Connections a process opens to Redis at most. A call beyond them waits (up to
SOCKET_TIMEOUT_S) for one to come free: a burst of accepted warnings must not fail its
control messages with redis-py's "Too many connections"."""


STOP_WITHIN_S = 5.0


async def stop_tasks(tasks: Collection[asyncio.Task[None]], within: float = STOP_WITHIN_S) -> None:
    """Cancel `tasks` and wait `within` seconds at most for them to end. redis-py can swallow a
    cancellation in a blocking read: a shutdown must not hang on one (the loops also end at
    their next turn, as they check that their owner is closing)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=within)
    for task in pending:
        log.warning("%s did not stop within %.0fs", task.get_name(), within)


def process_name() -> str:
    """This process's consumer name: host, pid and a random part (a restarted process with a
    reused pid is a new consumer, so it cannot take over its predecessor's claims unseen)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class RedisLink(Service):
    """A redis.asyncio client (bytes in, bytes out) and the deployment's namespace; an async
    context manager that closes the client's connections."""

    def __init__(self, url: str, deployment: str, *, name: str | None = None) -> None:
        self.url = url
        self.namespace = f"gw:{deployment}"
        self.name = name or process_name()
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=SOCKET_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30,
            # After a Redis restart every pooled connection is dead: a command on one is tried
            # again on a fresh one instead of failing (the callers retry longer outages).
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), RETRIES),
            retry_on_error=[ConnectionLost, NoAnswer],
        )
        self.client: aioredis.Redis = aioredis.Redis.from_pool(pool)

    def key(self, *parts: str) -> str:
        """`gw:{deployment}:part:part...`."""
        return ":".join((self.namespace, *parts))

    async def ping(self) -> None:
        """Raises redis.RedisError unless Redis answers."""
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()
