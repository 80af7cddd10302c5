"""The console across processes (design.md "Storage and several processes"): two gateway apps
on one PostgreSQL database and one Redis, as behind a load balancer. A session opened on one
is good on the other until signed out on either; a warning posted to one shows on the other's
event stream; failed sign-ins count across both; and the console survives Redis dying and
coming back, with pages told to refetch (a `change` with `all`) after the gap."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from http.cookies import SimpleCookie
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from aiohttp import ClientResponse

from gateway.config import Settings, load_settings
from gateway.console import HUB, SESSIONS
from gateway.console.events import Change, Subscription
from gateway.console.redis_hub import MAX_QUEUED, RedisHub
from gateway.console.sessions import COOKIE, IDLE
from gateway.console.sign_in_limit import MAX_FAILURES, WINDOW
from gateway.redis_link import RedisLink
from tests.conftest import GatewayClient, MakeClient
from tests.console_helpers import sign_in
from tests.fanout import post_warning
from tests.helpers import TOKENS, warning_body
from tests.redis_server import RedisServer

WAIT_S = 30.0
"""Bound on waiting for something that must happen (a hang fails instead of blocking)."""
Pair = tuple[GatewayClient, GatewayClient]


def shared(config_dir: Path, env: dict[str, str], pg_url: str, redis_url: str) -> Settings:
    return load_settings(
        config_dir, {**env, "GATEWAY_STORE": pg_url, "GATEWAY_REDIS_URL": redis_url}
    )


def hub_of(api: GatewayClient) -> RedisHub:
    hub = api.app[HUB]
    assert isinstance(hub, RedisHub)
    return hub


async def eventually(check: Callable[[], bool]) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "still not so"
        await asyncio.sleep(0.02)


async def two_apps(settings: Settings, make_client: MakeClient) -> Pair:
    """Two gateways on `settings`, each subscribed to the console channel."""
    a, b = await make_client(settings), await make_client(settings)
    await eventually(lambda: all(hub_of(api).subscriptions > 0 for api in (a, b)))
    return a, b


@pytest.fixture
async def pair(
    config_dir: Path, env: dict[str, str], pg_url: str, redis_url: str, make_client: MakeClient
) -> Pair:
    return await two_apps(shared(config_dir, env, pg_url, redis_url), make_client)


async def changes(stream: ClientResponse) -> AsyncIterator[dict[str, object]]:
    """The `change` events of an open /console/events stream, as they come."""
    event = ""
    async for raw in stream.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:") and event == "change":
            yield json.loads(line[5:])


async def until_named(stream: ClientResponse, warning_id: str) -> None:
    async def named() -> None:
        async for change in changes(stream):
            if warning_id in change["warnings"]:  # type: ignore[operator]
                return
        raise AssertionError("the stream ended")

    await asyncio.wait_for(named(), WAIT_S)


async def test_a_session_opened_on_one_process_is_good_on_the_other_until_signed_out(
    pair: Pair, redis_url: str
) -> None:
    a, b = pair
    body = warning_body()
    await post_warning(a, body)
    headers, csrf = await sign_in(a)
    page = await b.get("/console", headers=headers)
    assert body["title"] in await page.text()
    assert (await b.get("/console/fragments/warnings", headers=headers)).status == 200

    sid = headers["Cookie"].removeprefix(f"{COOKIE}=")
    r = aioredis.from_url(redis_url)
    try:  # Redis holds the session, but not its id (the cookie's value)
        [key] = await r.keys("*:console:session:*")
        assert sid.encode() not in key
        assert sid.encode() not in (await r.get(key) or b"")
    finally:
        await r.aclose()

    out = await a.post(
        "/console/sign-out", data={"csrf": csrf}, headers=headers, allow_redirects=False
    )
    assert out.status == 303
    assert (await b.get("/console/fragments/warnings", headers=headers)).status == 401
    assert body["title"] not in await (await b.get("/console", headers=headers)).text()


async def test_the_idle_timer_is_shared_by_the_processes(pair: Pair) -> None:
    a, b = pair
    now = [datetime(2026, 7, 1, 8, tzinfo=UTC)]
    a.app[SESSIONS].clock = b.app[SESSIONS].clock = lambda: now[0]
    fragment = "/console/fragments/warnings"
    headers, _ = await sign_in(a)
    now[0] += IDLE - timedelta(seconds=1)
    assert (await b.get(fragment, headers=headers)).status == 200
    now[0] += timedelta(hours=3)  # past IDLE since sign-in, not since its use on b
    assert (await a.get(fragment, headers=headers)).status == 200
    now[0] += IDLE
    assert (await b.get(fragment, headers=headers)).status == 401


async def test_a_warning_posted_to_one_process_shows_on_the_others_event_stream(
    pair: Pair,
) -> None:
    a, b = pair
    headers, _ = await sign_in(a)
    body = warning_body()
    async with a.get("/console/events", headers=headers) as stream:
        assert stream.status == 200
        first = await anext(changes(stream))
        assert first == {"warnings": [], "all": True}
        await post_warning(b, body)
        await until_named(stream, body["id"])


async def test_failed_sign_ins_are_limited_across_the_processes(pair: Pair) -> None:
    a, b = pair
    for i in range(MAX_FAILURES):
        wrong = await pair[i % 2].post("/console/sign-in", data={"token": f"guess-{i}"})
        assert wrong.status == 401
    for api in (a, b):
        resp = await api.post(
            "/console/sign-in", data={"token": TOKENS["reader"]}, allow_redirects=False
        )
        assert resp.status == 429
        assert 0 < int(resp.headers["Retry-After"]) <= WINDOW.total_seconds()
        assert "登录失败次数过多" in await resp.text()
        assert "Set-Cookie" not in resp.headers


async def next_batch(sub: Subscription) -> tuple[frozenset[str], bool]:
    batch = await asyncio.wait_for(sub.next(), WAIT_S)
    assert batch is not None
    return batch


def change(wid: str) -> list[Change]:
    return [Change(wid, frozenset({"received"}))]


async def test_the_hub_hears_every_process_once_and_resyncs_after_redis_comes_back(
    own_redis: RedisServer,
) -> None:
    links = [RedisLink(own_redis.url(), "d") for _ in range(3)]
    hubs = [RedisHub(link) for link in links]
    for link, hub in zip(links, hubs, strict=True):
        await link.__aenter__()
        await hub.__aenter__()
    a, b, c = hubs
    try:
        await eventually(lambda: all(h.subscriptions for h in hubs))
        async with a.subscribe() as on_a, c.subscribe() as on_c:
            a.publish(change("x"))
            assert await next_batch(on_a) == (
                frozenset({"x"}),
                False,
            )  # at once, in its own process
            assert await next_batch(on_c) == (frozenset({"x"}), False)  # through Redis
            b.publish(change("y"))  # published after x reached Redis: heard after its echo
            assert await next_batch(on_a) == (frozenset({"y"}), False)  # and x was not heard twice

            before = a.subscriptions
            own_redis.kill()
            a.publish(change("while-down"))  # does not wait for Redis; its own pages hear it
            assert await next_batch(on_a) == (frozenset({"while-down"}), False)
            own_redis.start()
            await eventually(lambda: a.subscriptions > before)
            assert (await next_batch(on_a))[1] is True  # the gap: refetch everything

            b.publish(change("after"))
            while "after" not in (await next_batch(on_a))[0]:
                pass
    finally:
        for link, hub in zip(links, hubs, strict=True):
            await hub.__aexit__(None, None, None)
            await link.__aexit__(None, None, None)


async def test_changes_dropped_by_a_full_queue_end_in_a_refetch(redis_url: str) -> None:
    async with (
        RedisLink(redis_url, "d") as la,
        RedisLink(redis_url, "d") as lb,
        RedisHub(la) as a,
        RedisHub(lb) as b,
    ):
        await eventually(lambda: a.subscriptions > 0)
        async with a.subscribe() as on_a:
            for _ in range(MAX_QUEUED + 1):  # in one go: more than the queue holds
                b.publish(change("same"))
            while not (await next_batch(on_a))[1]:
                pass


async def test_the_console_answers_503_while_redis_is_away_and_recovers(
    config_dir: Path,
    env: dict[str, str],
    pg_url: str,
    own_redis: RedisServer,
    make_client: MakeClient,
) -> None:
    a, b = await two_apps(shared(config_dir, env, pg_url, own_redis.url()), make_client)
    headers, _ = await sign_in(a)
    before = hub_of(a).subscriptions
    own_redis.kill()

    refused = await b.post(
        "/console/sign-in", data={"token": TOKENS["reader"]}, allow_redirects=False
    )
    assert refused.status == 503
    assert int(refused.headers["Retry-After"]) > 0
    assert "暂时不可用" in await refused.text()
    assert "Set-Cookie" not in refused.headers
    page = await a.get("/console", headers=headers)
    assert (page.status, page.headers["Retry-After"]) == (503, "5")
    fragment = await a.get("/console/fragments/warnings", headers=headers)
    assert (fragment.status, (await fragment.json())["code"]) == (503, "console_unavailable")
    body = warning_body()
    await post_warning(b, body)  # the store's commits do not wait for the console's Redis

    own_redis.start()
    await eventually(lambda: hub_of(a).subscriptions > before)
    resp = await a.post("/console/sign-in", data={"token": TOKENS["reader"]}, allow_redirects=False)
    assert resp.status == 303
    cookie = SimpleCookie(resp.headers["Set-Cookie"])[COOKIE].value
    a.session.cookie_jar.clear()
    headers = {"Cookie": f"{COOKIE}={cookie}"}
    assert body["title"] in await (await b.get("/console", headers=headers)).text()
    later = warning_body()
    async with a.get("/console/events", headers=headers) as stream:
        await anext(changes(stream))
        await post_warning(b, later)
        await until_named(stream, later["id"])
