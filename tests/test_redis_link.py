"""The link to the coordinating Redis under a burst (issue 11: several gateways)."""

from __future__ import annotations

import asyncio

from gateway.redis_link import MAX_CONNECTIONS, RedisLink


async def test_a_burst_beyond_the_pool_waits_for_a_connection_instead_of_failing(
    redis_url: str,
) -> None:
    # Each call holds its connection 0.2 s (a blocking pop on an empty list), as a burst of
    # accepted warnings holds them with their control messages; three times the pool at once.
    async with RedisLink(redis_url, "test-burst") as link:
        key = link.key("empty")
        calls = [link.client.blpop([key], timeout=0.2) for _ in range(3 * MAX_CONNECTIONS)]
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert results == [None] * (3 * MAX_CONNECTIONS)
