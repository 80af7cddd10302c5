"""The sweeper removes the Redis Stream consumers that dead processes leave in every group
(gateway/coord/sweeper.py): one that holds no entry, silent and with no heartbeat for the
bound (DEAD_AFTER_CLAIMS * claim_idle_s, LIVE_S at least), goes; a live process's consumer
stays however long its reads find nothing; one that holds entries stays until they were taken
over (XGROUP DELCONSUMER would drop them)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.coord.control import Control
from gateway.coord.relay import SharedQueue
from gateway.coord.streams import FIELD, GROUP, Streams
from gateway.coord.sweeper import Sweeper
from gateway.redis_link import RedisLink
from gateway.store import open_store
from gateway.web.keys import DISPATCHER
from tests.conftest import GatewayClient, MakeClient
from tests.test_shared_queue import two_gateways

pytestmark = pytest.mark.slow  # real servers killed and restarted: `-m "not slow"` skips them

WITHIN_S = 30.0


async def consumers(client: aioredis.Redis, stream: str) -> dict[str, int]:
    """The group's consumers by name: how many entries each holds."""
    infos = await client.xinfo_consumers(stream, GROUP)
    return {i["name"].decode(): int(i["pending"]) for i in infos}


async def read_as(client: aioredis.Redis, stream: str, name: str, delivery_id: str) -> str:
    """Queue an entry and claim it as consumer `name` in one transaction (no gateway reads it
    first); its id."""
    async with client.pipeline(transaction=True) as pipe:
        pipe.xadd(stream, {FIELD: delivery_id})
        pipe.xreadgroup(GROUP, name, {stream: ">"}, count=1)
        entry_id, _ = await pipe.execute()
    return str(entry_id.decode())


def queue_of(gateway: GatewayClient) -> SharedQueue:
    queue = gateway.app[DISPATCHER].relay
    assert isinstance(queue, SharedQueue)
    return queue


async def test_a_gone_gateways_consumers_are_removed_and_the_live_ones_stay(
    tmp_path: Path, make_client: MakeClient, pg_url: str, redis_url: str
) -> None:
    (a, b), _ = await two_gateways(
        tmp_path, make_client, pg_url, redis_url, claim_idle_s=1.0, sweep_s=0.2
    )
    streams = queue_of(a).streams
    client, stream = streams.client, streams.stream("sms", 4)
    live = {queue_of(g).streams.link.name for g in (a, b)}
    # The live gateways' consumers as they are after reads that found nothing (before Redis
    # 7.2 their `idle` grows then as a dead one's does).
    for name in [*live, "gone:1:empty"]:
        await client.xgroup_createconsumer(stream, GROUP, name)
    held = await read_as(client, stream, "gone:2:holding", "no-such-delivery")
    deadline = asyncio.get_running_loop().time() + WITHIN_S
    while True:
        now = await consumers(client, stream)
        if "gone:2:holding" not in now:  # only once a live gateway took its entry and acked it
            assert await client.xrange(stream, held, held) == []
        if not {"gone:1:empty", "gone:2:holding"} & now.keys():
            break
        assert asyncio.get_running_loop().time() < deadline, now
        await asyncio.sleep(0.1)
    assert live <= now.keys()


async def test_a_dead_consumer_holding_entries_stays_until_they_are_taken_over(
    pg_url: str, redis_url: str
) -> None:
    async with (
        RedisLink(redis_url, "dead-consumers", name="sweeping:1") as link,
        RedisLink(redis_url, "dead-consumers", name="alive:1") as other,
        Control(other, claim_idle_s=0.1),  # heartbeats: `alive:1` is up
        open_store(pg_url) as store,
    ):
        streams, others = Streams(link, ["sms"]), Streams(other, ["sms"])
        await streams.ensure_groups()
        sweeper = Sweeper(streams, store, Control(link, 0.1), sweep_s=0.1, claim_idle_s=0.1)
        client, stream = link.client, streams.stream("sms", 1)
        await client.xgroup_createconsumer(stream, GROUP, "alive:1")
        await client.xgroup_createconsumer(stream, GROUP, "gone:1:empty")
        await read_as(client, stream, "gone:2:holding", "d-1")
        deadline = asyncio.get_running_loop().time() + WITHIN_S
        while "gone:1:empty" in await consumers(client, stream):
            assert asyncio.get_running_loop().time() < deadline
            await sweeper.sweep()
            await asyncio.sleep(0.1)
        # As silent as the empty one, but the entry it holds would be lost with it.
        assert await consumers(client, stream) == {"alive:1": 0, "gone:2:holding": 1}
        taken = await others.take_over(stream, idle_ms=0, count=10)
        assert [e.delivery_id for e in taken] == ["d-1"]
        await sweeper.sweep()
        assert await consumers(client, stream) == {"alive:1": 1}
